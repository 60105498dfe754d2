// Causal depthwise conv1d (+ SiLU), backward, one kernel: x and dout read once (plus
// halos), dx written once; no pre-activation gradient goes through memory.
//
// A thread walks the input positions q of its steps [t0, t1) and W-1 more on each side,
// in order, with the last W inputs (xw) and the last W pre-activation gradients (gw) in
// registers. At q >= t0: pre[q] = bias + sum_k w[k] xp[q - (W-1) + k] (recomputed),
// dpre[q] = dout[q] act'(pre[q]) (0 past L), and for q < t1 the sums dw[k] += dpre[q]
// xp[q - (W-1) + k], dbias += dpre[q]. Then the input gradient of position r = q - (W-1):
// dxp[r] = sum_k w[k] dpre[r + (W-1) - k], which is dx for r in [t0, t1) and, in the
// thread holding step 0, d(initial states) for r < 0 (dpre before step 0 is 0: gw starts
// at 0). dw and dbias: summed over the block's threads (shuffles, then shared memory),
// then one float32 atomic add per (block, channel, tap) into a zeroed (dim, W) buffer.
//
// Specialization: as conv_fwd.cu.

struct CcBwdParams {
    u64 x, w, bias, h0, dout;                   // w (dim, W), h0 (batch, dim, W-1) contiguous
    u64 dx, dw, dbias, dh0;                     // dw (dim, W), dbias (dim,), dh0 (batch, dim, W-1): float32
    i64 batch, dim, L;
    i64 x_sb, x_sd, x_sl, dout_sb, dout_sd, dout_sl, dx_sb, dx_sd, dx_sl;
    i64 w_dtype, bias_dtype, h0_dtype;
    i64 silu, vec, iters;
};

// One position q of the walk, for C channels: xq = xp[q], gq = dout[q] (0 past L).
// Updates the windows and sums; returns in dxr the input gradient of r = q - (W-1).
template <int C, int W>
struct CcBwdWalk {
    float w[C][W], bias[C];
    float xw[C][W];                             // xp[q - (W-1) .. q]
    float gw[C][W];                             // dpre[q - (W-1) .. q]
    float dw[C][W], db[C];
    bool silu;

    SS_INLINE void push_x(const float (&xq)[C]) {
#pragma unroll
        for (int c = 0; c < C; ++c) {
#pragma unroll
            for (int k = 0; k < W - 1; ++k) xw[c][k] = xw[c][k + 1];
            xw[c][W - 1] = xq[c];
        }
    }

    // q in [t0, t1 + W - 1): own: q < t1 (its dpre counts in dw / dbias).
    SS_INLINE void step(const float (&gq)[C], bool own, float (&dxr)[C]) {
#pragma unroll
        for (int c = 0; c < C; ++c) {
            float g = gq[c];
            if (silu) {
                float pre = bias[c];
#pragma unroll
                for (int k = 0; k < W; ++k) pre += w[c][k] * xw[c][k];
                const float sg = cc_sigmoid(pre);
                g *= sg * (1.f + pre * (1.f - sg));
            }
            if (own) {
#pragma unroll
                for (int k = 0; k < W; ++k) dw[c][k] += g * xw[c][k];
                db[c] += g;
            }
#pragma unroll
            for (int k = 0; k < W - 1; ++k) gw[c][k] = gw[c][k + 1];
            gw[c][W - 1] = g;
            float acc = 0.f;
#pragma unroll
            for (int k = 0; k < W; ++k) acc += w[c][k] * gw[c][W - 1 - k];
            dxr[c] = acc;
        }
    }
};

template <typename T, int W, bool CL, int LC, int LT, int C, int S>
__device__ void cc_bwd(const CcBwdParams& p) {
    constexpr int NT = LC * LT, NW = NT / 32;
    static_assert(NT % 32 == 0 && 32 % LC == 0, "LC divides a warp, the block is whole warps");
    constexpr int RED = LC * C * (W + 1);       // partial sums per warp
    extern __shared__ ss_f4 smem4[];            // NW * RED floats (the launcher's size)
    float* red = reinterpret_cast<float*>(smem4);

    i64 c0, nc;
    int lt;
    cc_thread<CL, LC, C>(p.dim, c0, nc, lt);
    const bool active = nc > 0;                 // idle threads still meet the barrier below
    const i64 cs = active ? c0 : 0;
    const i64 b = blockIdx.z, L = p.L;
    const bool vec = p.vec != 0;
    CcBwdWalk<C, W> wk;
    wk.silu = p.silu != 0;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const i64 cc = c < nc ? cs + c : cs;
#pragma unroll
        for (int k = 0; k < W; ++k) {
            wk.w[c][k] = load_any(p.w, cc * W + k, p.w_dtype);
            wk.dw[c][k] = 0.f;
        }
        wk.bias[c] = p.bias ? load_any(p.bias, cc, p.bias_dtype) : 0.f;
        wk.db[c] = 0.f;
    }
    const T* x = reinterpret_cast<const T*>(p.x) + b * p.x_sb + cs * p.x_sd;
    const T* dout = reinterpret_cast<const T*>(p.dout) + b * p.dout_sb + cs * p.dout_sd;
    T* dx = reinterpret_cast<T*>(p.dx) + b * p.dx_sb + cs * p.dx_sd;
    float* dh0 = p.dh0 ? reinterpret_cast<float*>(p.dh0) + (b * p.dim + cs) * (W - 1) : nullptr;

    if constexpr (!CL) {
        static_assert(W - 1 <= S, "the halos come from one neighbouring lane");
        const int lane = threadIdx.x & 31;
        const i64 t0 = ((i64)blockIdx.x * LT + lt) * S;   // one S-step vector a thread
        const bool live = active && t0 < L;     // whole warps stay for the shuffles
        const i64 t1 = !live ? t0 : t0 + S < L ? t0 + S : L;
        constexpr int NX = S + 2 * (W - 1), NG = S + W - 1;
        float xv[NX];                           // xp[t0 - (W-1) .. t0 + S + W - 2]
        float gv[NG];                           // dout[t0 .. t0 + S + W - 2] (0 past L)
        {
            float mx[S], mg[S];
            if (live) {
                load_run<T, S>(x + t0, L - t0, vec, mx);
                load_run<T, S>(dout + t0, L - t0, vec, mg);
            } else {
#pragma unroll
                for (int i = 0; i < S; ++i) mx[i] = mg[i] = 0.f;
            }
#pragma unroll
            for (int i = 0; i < S; ++i) {
                xv[W - 1 + i] = mx[i];
                gv[i] = mg[i];
            }
#pragma unroll
            for (int k = 0; k < W - 1; ++k) {   // halos: the neighbouring lanes' steps
                float hl = __shfl_up_sync(0xffffffffu, mx[S - (W - 1) + k], 1);
                float hx = __shfl_down_sync(0xffffffffu, mx[k], 1);
                float hg = __shfl_down_sync(0xffffffffu, mg[k], 1);
                const i64 tl = t0 - (W - 1) + k, tr = t0 + S + k;
                if (lane == 0 && live) hl = tl >= 0 ? to_f(x[tl]) : cc_past<W>(p.h0, p.h0_dtype, b, p.dim, cs, tl);
                if (lane == 31 && live) {
                    hx = tr < L ? to_f(x[tr]) : 0.f;
                    hg = tr < L ? to_f(dout[tr]) : 0.f;
                }
                xv[k] = hl;
                xv[W - 1 + S + k] = hx;
                gv[S + k] = hg;
            }
        }
#pragma unroll
        for (int k = 0; k < W; ++k) wk.gw[0][k] = 0.f;
        float dxs[S], dh[W > 1 ? W - 1 : 1];  // dx of the steps; dxp of the W-1 positions before t0
#pragma unroll
        for (int u = 0; u < NX; ++u) {
            const float xq[1] = {xv[u]};
            wk.push_x(xq);
            if (u < W - 1) continue;            // positions before t0: inputs only
            const int iq = u - (W - 1);         // q - t0
            const float gq[1] = {gv[iq]};
            float dxr[1];
            wk.step(gq, t0 + iq < t1, dxr);
            const int ir = iq - (W - 1);        // r - t0
            if (ir >= 0) dxs[ir] = dxr[0];
            else dh[W - 1 + ir] = dxr[0];
        }
        if (live) store_run<T, S>(dx + t0, t1 - t0, vec, dxs);
        if (dh0 != nullptr && t0 == 0 && live) {
#pragma unroll
            for (int k = 0; k < W - 1; ++k) dh0[k] = dh[k];
        }
    } else {
        const i64 t0 = ((i64)blockIdx.x * LT + lt) * (p.iters * S);
        if (active && t0 < L) {
            const i64 t1 = t0 + p.iters * S < L ? t0 + p.iters * S : L;
#pragma unroll
            for (int c = 0; c < C; ++c) {
#pragma unroll
                for (int k = 0; k < W; ++k) wk.gw[c][k] = 0.f;
            }
#pragma unroll
            for (int k = 0; k < W - 1; ++k) {   // the W-1 inputs before t0
                const i64 t = t0 - (W - 1) + k;
                float v[C];
                if (t >= 0) {
                    load_run<T, C>(x + t * p.x_sl, nc, vec, v);
                } else {
#pragma unroll
                    for (int c = 0; c < C; ++c) v[c] = c < nc ? cc_past<W>(p.h0, p.h0_dtype, b, p.dim, cs + c, t) : 0.f;
                }
                wk.push_x(v);
            }
            const i64 qend = t1 + W - 1;        // dpre up to t1 + W - 2 feeds dx up to t1 - 1
            for (i64 qs = t0; qs < qend; qs += S) {
                float xs[S][C], gs[S][C];       // S steps loaded first: 2 S loads in flight
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    const i64 q = qs + s;
                    if (q < L && q < qend) {
                        load_run<T, C>(x + q * p.x_sl, nc, vec, xs[s]);
                        load_run<T, C>(dout + q * p.dout_sl, nc, vec, gs[s]);
                    } else {
#pragma unroll
                        for (int c = 0; c < C; ++c) xs[s][c] = gs[s][c] = 0.f;
                    }
                }
#pragma unroll
                for (int s = 0; s < S; ++s) {
                    const i64 q = qs + s;
                    if (q >= qend) break;
                    wk.push_x(xs[s]);
                    float dxr[C];
                    wk.step(gs[s], q < t1, dxr);
                    const i64 r = q - (W - 1);
                    if (r >= t0) {
                        store_run<T, C>(dx + r * p.dx_sl, nc, vec, dxr);
                    } else if (dh0 != nullptr && t0 == 0) {
#pragma unroll
                        for (int c = 0; c < C; ++c)
                            if (c < nc) dh0[c * (W - 1) + (W - 1) + r] = dxr[c];
                    }
                }
            }
        }
    }

    // dw, dbias: sum over the lanes of a warp that share channels (LC divides 32), then
    // over the warps in shared memory; one atomic add per (block, channel, tap).
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int c = 0; c < C; ++c) {
#pragma unroll
        for (int k = 0; k <= W; ++k) {
            float v = k < W ? wk.dw[c][k] : wk.db[c];
#pragma unroll
            for (int off = LC; off < 32; off *= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
            if (lane < LC) red[warp * RED + (lane * C + c) * (W + 1) + k] = v;
        }
    }
    __syncthreads();
    const i64 cb = CL ? (i64)blockIdx.y * LC * C : (i64)blockIdx.y;   // the block's first channel
    for (int e = threadIdx.x; e < RED; e += NT) {
        const i64 ch = cb + e / (W + 1);
        const int k = e % (W + 1);
        if (ch >= p.dim || (k == W && !p.dbias)) continue;
        float v = 0.f;
#pragma unroll
        for (int ww = 0; ww < NW; ++ww) v += red[ww * RED + e];
        if (k < W) atomicAdd(reinterpret_cast<float*>(p.dw) + ch * W + k, v);
        else atomicAdd(reinterpret_cast<float*>(p.dbias) + ch, v);
    }
}

template <int T, int W, int CL, int LC, int LT, int C, int S, int MB>
__global__ void __launch_bounds__(LC * LT, MB) cc_bwd_kernel(const CcBwdParams p) {
    cc_bwd<typename ss_dtype<T>::T, W, CL != 0, LC, LT, C, S>(p);
}

#ifdef CC_T
extern "C" __global__ void __launch_bounds__(CC_LC * CC_LT, CC_MIN_BLOCKS) mimetic_cc_bwd(const CcBwdParams p) {
    cc_bwd<ss_dtype<CC_T>::T, CC_W, CC_CL != 0, CC_LC, CC_LT, CC_C, CC_S>(p);
}
#endif
