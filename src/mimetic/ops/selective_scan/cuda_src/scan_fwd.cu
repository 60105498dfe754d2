// Mamba-1 selective scan, forward: one pass, one exp per (step, state), states never
// leave registers within a chunk (see docs/kernels.md, "CUDA selective scan").
//
// Specialization (-D macros from the loader): SS_T (dtype of u, delta, z, out: 0 float,
// 1 bf16, 2 fp16), SS_TBC (dtype of B, C), SS_CL, SS_TL, SS_KX, SS_W (layout, common.cuh),
// SS_NG (states staged and scanned per group; any N is walked in groups of NG), SS_SI
// (states the state loop takes per pass, side by side; divides NG).
//
// Per chunk each thread loads its KX steps of u and delta, forms delta (bias, softplus)
// and delta * u; then per state n: a_i = exp2(delta_i * A[n] * log2 e), b_i = delta_i u_i
// B_i[n]; composes its KX maps h -> a h + b into one; a shuffle scan over the TL time-lanes
// gives the lane's entry state from the channel's carry (shared memory); a sequential pass
// h = a h + b, y += C h finishes the steps; the last time-lane's state is the new carry.
// The state entering every T_CK-th step is stored (float32) for the backward.

struct SsFwdParams {
    u64 u, delta, A, B, C, D, z, bias, h0;      // inputs (A, D, bias, h0: float32)
    u64 out, ckpt, last;                        // outputs (ckpt, last: float32, may be 0)
    i64 batch, dim, L, N, groups, dpg, blocks_per_group;
    i64 u_sb, u_sd, delta_sb, delta_sd, z_sb, z_sd, out_sb, out_sd;
    i64 B_sb, B_sg, B_sn, C_sb, C_sg, C_sn;
    i64 ck_steps, n_ck;                         // checkpoint every ck_steps steps, n_ck slots + final
    i64 softplus, vec;
};

template <typename T, typename TBC, int CL, int TL, int KX, int W, int NG, int SI>
__device__ void ss_fwd(const SsFwdParams& p) {
    constexpr int NT = 32 * W, CB = CL * W, T_C = TL * KX;
    constexpr int ROW = row_floats<KX, TL>();
    static_assert(CL * TL == 32, "a warp is CL x TL lanes");
    static_assert(KX % 4 == 0, "KX steps are read from shared memory 4 at a time");
    static_assert(SI >= 1 && NG % SI == 0, "a group's states are walked SI at a time");

    extern __shared__ ss_f4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int NP = (int)p.N + 1;                // odd row stride: channels hit different banks
    float* Bs = smem;                           // [NG][ROW]
    float* Cs = Bs + NG * ROW;                  // [NG][ROW]
    float* A2s = Cs + NG * ROW;                 // [CB][NP]  A * log2(e)
    float* carry = A2s + CB * NP;               // [CB][NP]  state entering the chunk

    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int c = lane / TL, j = lane % TL;
    const int cl = w * CL + c;                  // channel within the block
    const i64 b = blockIdx.y;
    const i64 g = blockIdx.x / p.blocks_per_group;
    const i64 in_group = (blockIdx.x % p.blocks_per_group) * CB + cl;
    const bool valid = in_group < p.dpg;
    const i64 d = g * p.dpg + (valid ? in_group : 0);
    const i64 L = p.L, N = p.N;
    const i64 Lv = valid ? L : 0;               // an idle channel reads and writes nothing
    const bool vec = p.vec != 0;

    const T* u = reinterpret_cast<const T*>(p.u) + b * p.u_sb + d * p.u_sd;
    const T* delta = reinterpret_cast<const T*>(p.delta) + b * p.delta_sb + d * p.delta_sd;
    const T* z = p.z ? reinterpret_cast<const T*>(p.z) + b * p.z_sb + d * p.z_sd : nullptr;
    T* out = reinterpret_cast<T*>(p.out) + b * p.out_sb + d * p.out_sd;
    const TBC* Bb = reinterpret_cast<const TBC*>(p.B) + b * p.B_sb + g * p.B_sg;
    const TBC* Cb = reinterpret_cast<const TBC*>(p.C) + b * p.C_sb + g * p.C_sg;
    const float* A = reinterpret_cast<const float*>(p.A) + d * N;
    float* ckpt = reinterpret_cast<float*>(p.ckpt);
    const float Dd = p.D ? reinterpret_cast<const float*>(p.D)[d] : 0.f;
    const float bias = p.bias ? reinterpret_cast<const float*>(p.bias)[d] : 0.f;

    for (int n = j; n < N; n += TL) {
        A2s[cl * NP + n] = A[n] * SS_LOG2E;
        carry[cl * NP + n] = p.h0 ? reinterpret_cast<const float*>(p.h0)[(b * p.dim + d) * N + n] : 0.f;
    }

    const i64 n_chunks = (L + T_C - 1) / T_C;
    for (i64 ch = 0; ch < n_chunks; ++ch) {
        const i64 tc0 = ch * T_C, t0 = tc0 + j * KX;
        float dl[KX], du[KX], y[KX];
        {
            float uu[KX];
            load_steps<T, KX>(u, t0, Lv, vec, uu);
            load_steps<T, KX>(delta, t0, Lv, vec, dl);
#pragma unroll
            for (int i = 0; i < KX; ++i) {
                float x = dl[i] + bias;
                if (p.softplus) x = softplus(x);
                dl[i] = (t0 + i < Lv) ? x : 0.f;    // past the end: a = 1, b = 0
                du[i] = dl[i] * uu[i];
                y[i] = Dd * uu[i];
            }
        }
        const bool ck_here = ckpt != nullptr && valid && t0 < L && t0 % p.ck_steps == 0;
        float* ck_row = ck_here ? ckpt + ((b * (p.n_ck + 1) + t0 / p.ck_steps) * p.dim + d) * N : nullptr;

        for (i64 n0 = 0; n0 < N; n0 += NG) {
            __syncthreads();                        // the last group's rows are read
            stage_rows<TBC, NG, KX, TL, NT>(Bs, Bb, p.B_sn, n0, N, tc0, L);
            stage_rows<TBC, NG, KX, TL, NT>(Cs, Cb, p.C_sn, n0, N, tc0, L);
            __syncthreads();
#pragma unroll 1
            for (int k = 0; k < NG; k += SI) {
                const i64 n = n0 + k;
                if (n >= N) break;
                // SI states n .. n + SI - 1 side by side: independent chains the scheduler can
                // overlap. A partner past N runs on the zero rows staged for it, with a = 1
                // and a zero carry, and writes nothing; its lanes still reach every shuffle.
                bool live[SI];
                float a2[SI], a[SI][KX], bx[SI][KX], P[SI], H[SI];
#pragma unroll
                for (int s = 0; s < SI; ++s) {
                    live[s] = s == 0 || n + s < N;
                    a2[s] = live[s] ? A2s[cl * NP + n + s] : 0.f;
                    load_row<KX>(Bs + (k + s) * ROW + seg_offset<KX>(j), bx[s]);
                    P[s] = 1.f;
                    H[s] = 0.f;
                }
#pragma unroll
                for (int i = 0; i < KX; ++i) {
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        a[s][i] = ex2(dl[i] * a2[s]);
                        bx[s][i] *= du[i];
                        H[s] = a[s][i] * H[s] + bx[s][i];
                        P[s] *= a[s][i];
                    }
                }
                scan_forward<TL, SI>(P, H, j);
                float h[SI];
#pragma unroll
                for (int s = 0; s < SI; ++s) {
                    float Pe, He;
                    lanes_before<TL>(P[s], H[s], j, Pe, He);
                    h[s] = Pe * (live[s] ? carry[cl * NP + n + s] : 0.f) + He;
                    if (ck_here && live[s]) ck_row[n + s] = h[s];
                }
                float cv[SI][KX];
#pragma unroll
                for (int s = 0; s < SI; ++s) load_row<KX>(Cs + (k + s) * ROW + seg_offset<KX>(j), cv[s]);
#pragma unroll
                for (int i = 0; i < KX; ++i) {
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        h[s] = a[s][i] * h[s] + bx[s][i];
                        y[i] += cv[s][i] * h[s];
                    }
                }
#pragma unroll
                for (int s = 0; s < SI; ++s) {
                    const float h_end = TL > 1 ? __shfl_sync(0xffffffffu, h[s], TL - 1, TL) : h[s];
                    if (j == 0 && live[s]) carry[cl * NP + n + s] = h_end;   // every lane has read the old carry
                }
            }
        }
        if (z != nullptr) {
            float zz[KX];
            load_steps<T, KX>(z, t0, Lv, vec, zz);
#pragma unroll
            for (int i = 0; i < KX; ++i) y[i] *= zz[i] * sigmoid(zz[i]);
        }
        store_steps<T, KX>(out, t0, Lv, vec, y);
    }
    __syncwarp();
    if (valid) {
        for (int n = j; n < N; n += TL) {
            const float h = carry[cl * NP + n];
            if (p.last) reinterpret_cast<float*>(p.last)[(b * p.dim + d) * N + n] = h;
            if (ckpt) ckpt[((b * (p.n_ck + 1) + p.n_ck) * p.dim + d) * N + n] = h;
        }
    }
}

// Every specialization as a template kernel (CI compiles many in one translation unit by
// explicit instantiation), and the loader's one specialization, named by the -D macros, as
// an unmangled entry point.
template <int T, int TBC, int CL, int TL, int KX, int W, int MB, int NG, int SI>
__global__ void __launch_bounds__(W * 32, MB) ss_fwd_kernel(const SsFwdParams p) {
    ss_fwd<typename ss_dtype<T>::T, typename ss_dtype<TBC>::T, CL, TL, KX, W, NG, SI>(p);
}

#ifdef SS_T
extern "C" __global__ void __launch_bounds__(SS_W * 32, SS_MIN_BLOCKS) mimetic_ss_fwd(const SsFwdParams p) {
    ss_fwd<ss_dtype<SS_T>::T, ss_dtype<SS_TBC>::T, SS_CL, SS_TL, SS_KX, SS_W, SS_NG, SS_SI>(p);
}
#endif
