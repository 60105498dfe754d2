// Pieces shared by the run-time compiled kernels of every op (selective_scan/cuda_src,
// causal_conv1d/cuda_src): the loaders (their cuda.py, through ops/_cuda_rtc.py) put this
// file first, before the op's own header and kernel file.
//
// Written to compile with NVRTC and no CUDA headers (torch's wheels ship NVRTC, not always
// the toolkit's headers): own 16-bit float types converted with inline PTX, own vector
// types. The ss_ / SS_ prefix is historical (the selective scan came first).

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
