// Shared pieces of the causal depthwise conv1d kernels (conv_fwd.cu, conv_bwd.cu).
//
// The loader (causal_conv1d/cuda.py) puts ops/cuda_src/common.cuh first (16-bit float
// types and conversions, 16-byte vectors, ex2), then this file, then the kernel file; the
// specialization comes as -D macros.
//
// Layouts (template flag CL), a tile of C channels x S steps per thread and LC x LT
// threads per block (thread t: lc = t % LC, lt = t / LC):
// * CL false, time contiguous (Mamba-1's (b, d, L)): LC = C = 1; each thread loads S
//   consecutive steps of one row as vectors (lanes side by side in time: coalesced) and
//   takes the W-1 halo steps around them from the neighbouring lanes by shuffles (only
//   a warp's first / last lane loads them: scalar loads from every lane would ask L1 for
//   three times the vector's sectors); a block's LT threads cover LT * S steps of one
//   channel. Whole warps stay to the end for the shuffles (lanes past L compute zeros).
// * CL true, channels contiguous (Mamba-2's transposed (b, L, d) slice): each thread owns
//   C adjacent channels (one vector per step; a warp's 32 lanes cover 32 C channels of
//   one step: coalesced) and streams `iters` * S consecutive steps with the last W inputs
//   in registers, so x is read once plus W-1 halo steps per run.

// A value of a small tensor (weight, bias, initial state), in its own dtype (the launch's
// runtime dtype code: 0 float, 1 bf16, 2 fp16).
SS_INLINE float load_any(u64 base, i64 i, i64 code) {
    if (code == 1) return to_f(reinterpret_cast<const ss_bf16*>(base)[i]);
    if (code == 2) return to_f(reinterpret_cast<const ss_f16*>(base)[i]);
    return reinterpret_cast<const float*>(base)[i];
}

// Vector access of N elements of T: 16-byte pieces, or one 8- or 4-byte piece when N T
// are fewer bytes (C = 4 bf16 channels: one 8-byte access).
template <int BYTES> struct cc_piece;
template <> struct cc_piece<16> { typedef ss_vec16 V; };
template <> struct cc_piece<8> { struct alignas(8) V { unsigned int w[2]; }; };
template <> struct cc_piece<4> { typedef unsigned int V; };

template <typename T, int N>
struct cc_vec {
    static constexpr int BYTES = N * (int)sizeof(T);
    static constexpr int PIECE = BYTES >= 16 ? 16 : BYTES;
    static constexpr bool OK = BYTES % PIECE == 0 && (PIECE == 16 || PIECE == 8 || PIECE == 4);
    static constexpr int NP = OK ? BYTES / PIECE : 1;
    typedef typename cc_piece<OK ? PIECE : 4>::V V;
};

// N consecutive elements p[0 .. N) as float, those >= n read as 0. vec: p is aligned to
// cc_vec<T, N>::PIECE bytes (the launcher checks pointers and strides), so a full run is
// one or two vector loads; otherwise element by element.
template <typename T, int N>
SS_INLINE void load_run(const T* __restrict__ p, i64 n, bool vec, float (&v)[N]) {
    typedef cc_vec<T, N> VT;
    if (VT::OK && vec && n >= N) {
        union { typename VT::V q[VT::NP]; T e[N]; } raw;
        const typename VT::V* src = reinterpret_cast<const typename VT::V*>(p);
#pragma unroll
        for (int k = 0; k < VT::NP; ++k) raw.q[k] = src[k];
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = to_f(raw.e[i]);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = i < n ? to_f(p[i]) : 0.f;
    }
}

// The store matching load_run; elements >= n are not written.
template <typename T, int N>
SS_INLINE void store_run(T* __restrict__ p, i64 n, bool vec, const float (&v)[N]) {
    typedef cc_vec<T, N> VT;
    if (VT::OK && vec && n >= N) {
        union { typename VT::V q[VT::NP]; T e[N]; } raw;
#pragma unroll
        for (int i = 0; i < N; ++i) raw.e[i] = from_f<T>(v[i]);
        typename VT::V* dst = reinterpret_cast<typename VT::V*>(p);
#pragma unroll
        for (int k = 0; k < VT::NP; ++k) dst[k] = raw.q[k];
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i)
            if (i < n) p[i] = from_f<T>(v[i]);
    }
}

// Geometry of a thread: its first channel c0, channels it owns nc (<= 0: idle), batch b.
template <bool CL, int LC, int C>
SS_INLINE void cc_thread(i64 dim, i64& c0, i64& nc, int& lt) {
    const int lc = threadIdx.x % LC;
    lt = threadIdx.x / LC;
    c0 = CL ? ((i64)blockIdx.y * LC + lc) * C : (i64)blockIdx.y;
    nc = dim - c0 < C ? dim - c0 : C;
}

// The W-1 inputs before step 0 of channel c (initial states, (b, dim, W-1) contiguous in
// their own dtype; zeros without them): xp[p] for -(W-1) <= p < 0.
template <int W>
SS_INLINE float cc_past(u64 h0, i64 h0_dtype, i64 b, i64 dim, i64 c, i64 p) {
    return h0 ? load_any(h0, (b * dim + c) * (W - 1) + (W - 1) + p, h0_dtype) : 0.f;
}

// sigmoid on the MUFU unit: 1 / (1 + 2^(-x log2 e)) with ex2.approx and rcp.approx
// (relative error ~2^-21; exact division in the CPU emulation). The conv is memory-bound
// only while its arithmetic stays small: expf and an IEEE division per element, and the
// backward's recomputation of W-1 halo steps, would not.
#ifdef MIMETIC_CPU_EMULATION
#define CC_RCP_APPROX(y, x) ((y) = 1.f / (x))
#else
#define CC_RCP_APPROX(y, x) asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x))
#endif
SS_INLINE float cc_sigmoid(float x) {
    float r;
    CC_RCP_APPROX(r, 1.f + ex2(-x * SS_LOG2E));
    return r;
}
