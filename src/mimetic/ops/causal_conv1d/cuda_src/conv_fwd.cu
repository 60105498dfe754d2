// Causal depthwise conv1d (+ SiLU), forward: out[b, c, t] = act(bias[c] + sum_k w[c, k]
// xp[b, c, t - (W-1) + k]), xp = x preceded by the W-1 initial states (zeros if absent).
// One pass: x read once (plus W-1 halo steps per run of steps), out written once, W
// multiply-adds per element in float32 (conv_common.cuh for the two layouts).
//
// Specialization (-D macros from the loader): CC_T (dtype of x and out: 0 float, 1 bf16,
// 2 fp16), CC_W (width), CC_CL (1: channels contiguous), CC_LC, CC_LT, CC_C, CC_S (tile),
// CC_MIN_BLOCKS (__launch_bounds__' blocks per SM: caps the registers).

struct CcFwdParams {
    u64 x, w, bias, h0, out;                    // w (dim, W), h0 (batch, dim, W-1) contiguous
    i64 batch, dim, L;
    i64 x_sb, x_sd, x_sl, out_sb, out_sd, out_sl;
    i64 w_dtype, bias_dtype, h0_dtype;          // dtype codes of the small tensors
    i64 silu, vec, iters;                       // vec: rows aligned for vector access; iters: CL runs
};

template <typename T, int W, bool CL, int LC, int LT, int C, int S>
__device__ void cc_fwd(const CcFwdParams& p) {
    static_assert(CL || W - 1 <= S, "the halo comes from one neighbouring lane");
    i64 c0, nc;
    int lt;
    cc_thread<CL, LC, C>(p.dim, c0, nc, lt);
    if (CL && nc <= 0) return;                  // CL: no warp operation in this kernel
    const i64 b = blockIdx.z, L = p.L;
    const bool vec = p.vec != 0;
    float w[C][W], bias[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const i64 cc = c < nc ? c0 + c : c0;    // an absent channel computes channel c0, unstored
#pragma unroll
        for (int k = 0; k < W; ++k) w[c][k] = load_any(p.w, cc * W + k, p.w_dtype);
        bias[c] = p.bias ? load_any(p.bias, cc, p.bias_dtype) : 0.f;
    }
    const T* x = reinterpret_cast<const T*>(p.x) + b * p.x_sb + c0 * p.x_sd;
    T* out = reinterpret_cast<T*>(p.out) + b * p.out_sb + c0 * p.out_sd;

    if constexpr (!CL) {
        const int lane = threadIdx.x & 31;
        const i64 t0 = ((i64)blockIdx.x * LT + lt) * S;   // one S-step vector a thread
        const bool live = t0 < L;
        float xv[S + W - 1];                    // xp[t0 - (W-1) .. t0 + S - 1]
        float m[S];
        if (live) {
            load_run<T, S>(x + t0, L - t0, vec, m);
        } else {
#pragma unroll
            for (int i = 0; i < S; ++i) m[i] = 0.f;
        }
#pragma unroll
        for (int k = 0; k < W - 1; ++k) {       // the previous lane's last W-1 steps
            float h = __shfl_up_sync(0xffffffffu, m[S - (W - 1) + k], 1);
            const i64 t = t0 - (W - 1) + k;
            if (lane == 0 && live) h = t >= 0 ? to_f(x[t]) : cc_past<W>(p.h0, p.h0_dtype, b, p.dim, c0, t);
            xv[k] = h;
        }
#pragma unroll
        for (int i = 0; i < S; ++i) xv[W - 1 + i] = m[i];
#pragma unroll
        for (int i = 0; i < S; ++i) {
            float acc = bias[0];
#pragma unroll
            for (int k = 0; k < W; ++k) acc += w[0][k] * xv[i + k];
            m[i] = p.silu ? acc * cc_sigmoid(acc) : acc;
        }
        if (live) store_run<T, S>(out + t0, L - t0, vec, m);
    } else {
        const i64 t0 = ((i64)blockIdx.x * LT + lt) * (p.iters * S);
        if (t0 >= L) return;
        const i64 t1 = t0 + p.iters * S < L ? t0 + p.iters * S : L;
        float xw[C][W];                         // xw[c][W-1 - j]: xp at (current step) - j
#pragma unroll
        for (int k = 0; k < W - 1; ++k) {
            const i64 t = t0 - (W - 1) + k;
            float v[C];
            if (t >= 0) {
                load_run<T, C>(x + t * p.x_sl, nc, vec, v);
            } else {
#pragma unroll
                for (int c = 0; c < C; ++c) v[c] = c < nc ? cc_past<W>(p.h0, p.h0_dtype, b, p.dim, c0 + c, t) : 0.f;
            }
#pragma unroll
            for (int c = 0; c < C; ++c) xw[c][k + 1] = v[c];
        }
        for (i64 ts = t0; ts < t1; ts += S) {
            float xs[S][C];                     // S steps loaded first: S loads in flight
#pragma unroll
            for (int s = 0; s < S; ++s) {
                if (ts + s < t1) {
                    load_run<T, C>(x + (ts + s) * p.x_sl, nc, vec, xs[s]);
                } else {
#pragma unroll
                    for (int c = 0; c < C; ++c) xs[s][c] = 0.f;
                }
            }
#pragma unroll
            for (int s = 0; s < S; ++s) {
                float y[C];
#pragma unroll
                for (int c = 0; c < C; ++c) {
#pragma unroll
                    for (int k = 0; k < W - 1; ++k) xw[c][k] = xw[c][k + 1];
                    xw[c][W - 1] = xs[s][c];
                    float acc = bias[c];
#pragma unroll
                    for (int k = 0; k < W; ++k) acc += w[c][k] * xw[c][k];
                    y[c] = p.silu ? acc * cc_sigmoid(acc) : acc;
                }
                if (ts + s < t1) store_run<T, C>(out + (ts + s) * p.out_sl, nc, vec, y);
            }
        }
    }
}

// Every specialization as a template kernel (CI compiles them all in one translation unit
// by explicit instantiation), and the loader's one, named by the -D macros, unmangled.
template <int T, int W, int CL, int LC, int LT, int C, int S, int MB>
__global__ void __launch_bounds__(LC * LT, MB) cc_fwd_kernel(const CcFwdParams p) {
    cc_fwd<typename ss_dtype<T>::T, W, CL != 0, LC, LT, C, S>(p);
}

#ifdef CC_T
extern "C" __global__ void __launch_bounds__(CC_LC * CC_LT, CC_MIN_BLOCKS) mimetic_cc_fwd(const CcFwdParams p) {
    cc_fwd<ss_dtype<CC_T>::T, CC_W, CC_CL != 0, CC_LC, CC_LT, CC_C, CC_S>(p);
}
#endif
