// Shared pieces of the Mamba-1 selective scan kernels (scan_fwd.cu, scan_bwd.cu).
//
// Written to compile with NVRTC and no CUDA headers (torch's wheels ship NVRTC, not always
// the toolkit's headers): own 16-bit float types converted with inline PTX, own vector
// type, hand-written warp-shuffle scans. The loader (ops/_cuda_rtc.py) prepends this file to
// each kernel file and passes the specialization as -D macros (see the kernel files).
//
// Thread layout shared by both directions: a block is W warps; a warp is CL channel-lanes x
// TL time-lanes, lane = c * TL + j (time-lanes of one channel adjacent, so the time scans
// are shuffles within a width-TL segment). Thread (warp w, c, j) owns channel w * CL + c
// of the block and KX consecutive steps j * KX .. j * KX + KX - 1 of each chunk of
// T_C = TL * KX steps. The block's C_b = W * CL channels walk the same chunks, so B and C
// (shared by every channel of a group) are staged once per block in shared memory.

typedef long long i64;
typedef unsigned long long u64;

#define SS_INLINE __device__ inline __attribute__((always_inline))

struct ss_bf16 { unsigned short v; };
struct ss_f16 { unsigned short v; };
struct alignas(16) ss_vec16 { unsigned int w[4]; };   // 16 bytes: one vector load/store
struct alignas(16) ss_f4 { float x, y, z, w; };

template <int K> struct ss_dtype;                      // the -D dtype codes of the loader
template <> struct ss_dtype<0> { typedef float T; };
template <> struct ss_dtype<1> { typedef ss_bf16 T; };
template <> struct ss_dtype<2> { typedef ss_f16 T; };

// The inline PTX, as macros so that the CPU emulation of the tests (tests/ops/cuda_emu,
// -DMIMETIC_CPU_EMULATION, never set for NVRTC / nvcc) can put C++ in their place.
#ifdef MIMETIC_CPU_EMULATION
#define SS_CVT_F32_F16(f, h) ((f) = ::emu::f16_to_f32(h))
#define SS_CVT_BF16_F32(h, f) ((h) = ::emu::f32_to_bf16(f))
#define SS_CVT_F16_F32(h, f) ((h) = ::emu::f32_to_f16(f))
#define SS_EX2_APPROX(y, x) ((y) = ::emu::ex2_approx_ftz(x))
#else
#define SS_CVT_F32_F16(f, h) asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h))
#define SS_CVT_BF16_F32(h, f) asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f))
#define SS_CVT_F16_F32(h, f) asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f))
#define SS_EX2_APPROX(y, x) asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x))
#endif

SS_INLINE float to_f(float x) { return x; }
SS_INLINE float to_f(ss_bf16 x) { return __uint_as_float(((unsigned int)x.v) << 16); }
SS_INLINE float to_f(ss_f16 x) {
    float f;
    SS_CVT_F32_F16(f, x.v);
    return f;
}

template <typename T> SS_INLINE T from_f(float x);
template <> SS_INLINE float from_f<float>(float x) { return x; }
template <> SS_INLINE ss_bf16 from_f<ss_bf16>(float x) {
    ss_bf16 r;
    SS_CVT_BF16_F32(r.v, x);
    return r;
}
template <> SS_INLINE ss_f16 from_f<ss_f16>(float x) {
    ss_f16 r;
    SS_CVT_F16_F32(r.v, x);
    return r;
}

// 2^x on the MUFU unit (one instruction; relative error ~2^-22, flushes subnormals).
SS_INLINE float ex2(float x) {
    float y;
    SS_EX2_APPROX(y, x);
    return y;
}

#define SS_LOG2E 1.4426950408889634f

// softplus as torch computes it (threshold 20: larger inputs pass through).
SS_INLINE float softplus(float x) { return x > 20.f ? x : log1pf(expf(x)); }
SS_INLINE float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// KX consecutive steps t0 .. t0 + KX - 1 of one (b, d) row, as float; steps >= L read 0.
// vec: the row and t0 are 16-byte aligned (the launcher checks pointers and strides), so
// full runs use 16-byte loads; the tail and unaligned rows load element by element.
template <typename T, int KX>
SS_INLINE void load_steps(const T* __restrict__ row, i64 t0, i64 L, bool vec, float (&v)[KX]) {
    constexpr int NV = (KX * (int)sizeof(T)) / 16;
    if (NV > 0 && (KX * (int)sizeof(T)) % 16 == 0 && vec && t0 + KX <= L) {
        union { ss_vec16 q[NV > 0 ? NV : 1]; T e[KX]; } raw;
        const ss_vec16* p = reinterpret_cast<const ss_vec16*>(row + t0);
#pragma unroll
        for (int k = 0; k < NV; ++k) raw.q[k] = p[k];
#pragma unroll
        for (int i = 0; i < KX; ++i) v[i] = to_f(raw.e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < KX; ++i) v[i] = (t0 + i < L) ? to_f(row[t0 + i]) : 0.f;
    }
}

// The store matching load_steps; steps >= L are not written.
template <typename T, int KX>
SS_INLINE void store_steps(T* __restrict__ row, i64 t0, i64 L, bool vec, const float (&v)[KX]) {
    constexpr int NV = (KX * (int)sizeof(T)) / 16;
    if (NV > 0 && (KX * (int)sizeof(T)) % 16 == 0 && vec && t0 + KX <= L) {
        union { ss_vec16 q[NV > 0 ? NV : 1]; T e[KX]; } raw;
#pragma unroll
        for (int i = 0; i < KX; ++i) raw.e[i] = from_f<T>(v[i]);
        ss_vec16* p = reinterpret_cast<ss_vec16*>(row + t0);
#pragma unroll
        for (int k = 0; k < NV; ++k) p[k] = raw.q[k];
    } else {
#pragma unroll
        for (int i = 0; i < KX; ++i)
            if (t0 + i < L) row[t0 + i] = from_f<T>(v[i]);
    }
}

// Shared-memory row of one state's B (or C) values for a chunk: time-lane j's KX values
// start at seg_offset(j), padded by 4 floats every 32 / KX lanes so that the 8 lanes of a
// 128-bit load phase hit 8 different 16-byte bank groups.
template <int KX>
SS_INLINE constexpr int seg_offset(int j) {
    return j * KX + (j / (32 / KX > 0 ? 32 / KX : 1)) * 4;
}
template <int KX, int TL>
SS_INLINE constexpr int row_floats() {
    return seg_offset<KX>(TL) + (seg_offset<KX>(TL) % 4 ? 4 - seg_offset<KX>(TL) % 4 : 0);
}

// KX floats of a staged row (16-byte aligned: KX % 4 == 0).
template <int KX>
SS_INLINE void load_row(const float* p, float (&v)[KX]) {
#pragma unroll
    for (int k = 0; k < KX / 4; ++k) {
        ss_f4 q = reinterpret_cast<const ss_f4*>(p)[k];
        v[4 * k] = q.x; v[4 * k + 1] = q.y; v[4 * k + 2] = q.z; v[4 * k + 3] = q.w;
    }
}

// Stages rows n0 .. n0 + NG - 1 of M (b, g, n, L: element M[n * sn + t] from Mbase) for
// the chunk's steps tc0 .. tc0 + TL * KX - 1 into dst (NG rows of row_floats floats), as
// float; states >= N and steps >= L become 0. Coalesced along time; every thread helps.
template <typename TM, int NG, int KX, int TL, int NT>
SS_INLINE void stage_rows(float* dst, const TM* __restrict__ Mbase, i64 sn, i64 n0, i64 N,
                          i64 tc0, i64 L) {
    constexpr int T_C = TL * KX;
    constexpr int ROW = row_floats<KX, TL>();
    for (int e = threadIdx.x; e < NG * T_C; e += NT) {
        const int k = e / T_C, t = e % T_C;
        const i64 n = n0 + k, tt = tc0 + t;
        float v = 0.f;
        if (n < N && tt < L) v = to_f(Mbase[n * sn + tt]);
        const int jj = t / KX;
        dst[k * ROW + seg_offset<KX>(jj) + (t - jj * KX)] = v;
    }
}

// Inclusive scan of affine maps h -> P h + H over the TL time-lanes of a channel, in time
// order (lane j ends with the composition of lanes 0..j).
template <int TL>
SS_INLINE void scan_forward(float& P, float& H, int j) {
#pragma unroll
    for (int off = 1; off < TL; off *= 2) {
        const float Po = __shfl_up_sync(0xffffffffu, P, off, TL);
        const float Ho = __shfl_up_sync(0xffffffffu, H, off, TL);
        if (j >= off) { H = P * Ho + H; P = P * Po; }
    }
}

// The same in reverse time order (lane j ends with the composition of lanes j..TL-1).
template <int TL>
SS_INLINE void scan_reverse(float& P, float& H, int j) {
#pragma unroll
    for (int off = 1; off < TL; off *= 2) {
        const float Po = __shfl_down_sync(0xffffffffu, P, off, TL);
        const float Ho = __shfl_down_sync(0xffffffffu, H, off, TL);
        if (j + off < TL) { H = P * Ho + H; P = P * Po; }
    }
}

// Sum over the TL time-lanes (every lane gets it).
template <int TL>
SS_INLINE float sum_time_lanes(float v) {
#pragma unroll
    for (int off = TL / 2; off >= 1; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off, TL);
    return v;
}
