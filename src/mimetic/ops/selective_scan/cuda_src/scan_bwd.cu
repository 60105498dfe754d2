// Mamba-1 selective scan, backward: one kernel, chunks in reverse (see docs/kernels.md,
// "CUDA selective scan"). Same thread layout and -D macros as scan_fwd.cu; the chunk
// length TL * KX is the forward's checkpoint interval.
//
// Per chunk and state n: the states are recomputed from the stored chunk-entry state
// (forward scan, one exp per step, kept for the reverse pass), then the adjoint
//     dh_t = C_t dy_t + a_{t+1} dh_{t+1}
// runs as a reverse shuffle scan over the time-lanes seeded by the channel's carry
// q = a_{t+1} dh_{t+1} from the chunk after (shared memory). With a_t h_{t-1} = h_t - b_t:
//     du_t = delta_t S1_t + D dy_t,          S1_t = sum_n dh_t B_t
//     ddelta_t = u_t S1_t + sum_n A dh_t a_t h_{t-1}     (times sigmoid for softplus)
//     dA += dh_t delta_t a_t h_{t-1},  dB_t += dh_t delta_t u_t,  dC_t += dy_t h_t
// dB and dC sum over the channels of a group: a reduce-scatter over the CL channel-lanes
// (xor shuffles, each lane keeps KX / CL sums), per-warp partials in shared memory summed
// over the W warps, then one float atomic add per (block, step, state) into dB / dC.

struct SsBwdParams {
    u64 u, delta, A, B, C, D, z, bias, ckpt, dout, dlast;    // inputs (A, D, bias, ckpt, dlast: float32)
    u64 du, ddelta, dz;                                       // gradients in T
    u64 dA, dB, dC, dD, dbias, dh0;                           // float32: dA (b, d, N), dB/dC (b, g, N, L)
                                                              // summed here, dD/dbias (b, d), dh0 (b, d, N)
    i64 batch, dim, L, N, groups, dpg, blocks_per_group;
    i64 u_sb, u_sd, delta_sb, delta_sd, z_sb, z_sd, dout_sb, dout_sd;
    i64 du_sb, du_sd, ddelta_sb, ddelta_sd, dz_sb, dz_sd;
    i64 B_sb, B_sg, B_sn, C_sb, C_sg, C_sn;
    i64 n_ck;
    i64 softplus, vec;
};

// Sums v over the CL channel-lanes of a warp (lane bits above TL) and scatters the sums:
// afterwards this lane holds RS = max(KX / CL, 1) sums, for steps base .. base + RS - 1 of
// its time-lane; owner is false for lanes whose sums another lane holds (CL > KX).
template <int CL, int TL, int KX>
SS_INLINE void reduce_scatter_channels(float (&v)[KX], int c, int& base, bool& owner) {
    base = 0;
    owner = true;
    int len = KX;
#pragma unroll
    for (int m = CL / 2; m >= 1; m /= 2) {
        const bool upper = (c & m) != 0;
        if (len > 1) {
            const int half = len / 2;
#pragma unroll
            for (int i = 0; i < half; ++i) {
                const float send = upper ? v[i] : v[i + half];
                const float keep = upper ? v[i + half] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, m * TL);
            }
            if (upper) base += half;
            len = half;
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], m * TL);
            owner = owner && !upper;
        }
    }
}

// dB or dC of the SI states k .. k + SI - 1 of a pass: each state's KX values summed over
// the warp's channels (reduce-scattered), the sums written into the warp's partials red
// ([W][NG][T_c]; the block's W warps are summed later, one atomic per (step, state)). A
// partner past N (not live) takes part in the shuffles and writes nothing.
template <int CL, int TL, int KX, int NG, int SI>
SS_INLINE void store_warp_partials(float (&v)[SI][KX], const bool (&live)[SI], float* red, int w, int k, int j,
                                   int c) {
    constexpr int T_C = TL * KX, RS = KX / CL > 0 ? KX / CL : 1;
#pragma unroll
    for (int s = 0; s < SI; ++s) {
        int base;
        bool owner;
        reduce_scatter_channels<CL, TL, KX>(v[s], c, base, owner);
        if (owner && live[s]) {
#pragma unroll
            for (int i = 0; i < RS; ++i) red[(w * NG + k + s) * T_C + j * KX + base + i] = v[s][i];
        }
    }
}

template <typename T, typename TBC, int CL, int TL, int KX, int W, int NG, int SI>
__device__ void ss_bwd(const SsBwdParams& p) {
    constexpr int NT = 32 * W, CB = CL * W, T_C = TL * KX;
    constexpr int ROW = row_floats<KX, TL>();
    static_assert(CL * TL == 32, "a warp is CL x TL lanes");
    static_assert(KX % 4 == 0, "KX steps are read from shared memory 4 at a time");
    static_assert(SI >= 1 && NG % SI == 0, "a group's states are walked SI at a time");

    extern __shared__ ss_f4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    const int NP = (int)p.N + 1;
    float* Bs = smem;                           // [NG][ROW]
    float* Cs = Bs + NG * ROW;                  // [NG][ROW]
    float* redB = Cs + NG * ROW;                // [W][NG][T_C] per-warp dB partials
    float* redC = redB + W * NG * T_C;          // [W][NG][T_C] per-warp dC partials
    float* As = redC + W * NG * T_C;            // [CB][NP]
    float* qcarry = As + CB * NP;               // [CB][NP]  a dh entering from the next chunk
    float* dAs = qcarry + CB * NP;              // [CB][NP]  dA of this batch row

    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int c = lane / TL, j = lane % TL;
    const int cl = w * CL + c;
    const i64 b = blockIdx.y;
    const i64 g = blockIdx.x / p.blocks_per_group;
    const i64 in_group = (blockIdx.x % p.blocks_per_group) * CB + cl;
    const bool valid = in_group < p.dpg;
    const i64 d = g * p.dpg + (valid ? in_group : 0);
    const i64 L = p.L, N = p.N;
    const i64 Lv = valid ? L : 0;
    const bool vec = p.vec != 0;

    const T* u = reinterpret_cast<const T*>(p.u) + b * p.u_sb + d * p.u_sd;
    const T* delta = reinterpret_cast<const T*>(p.delta) + b * p.delta_sb + d * p.delta_sd;
    const T* z = p.z ? reinterpret_cast<const T*>(p.z) + b * p.z_sb + d * p.z_sd : nullptr;
    const T* dout = reinterpret_cast<const T*>(p.dout) + b * p.dout_sb + d * p.dout_sd;
    T* du_out = reinterpret_cast<T*>(p.du) + b * p.du_sb + d * p.du_sd;
    T* ddelta_out = reinterpret_cast<T*>(p.ddelta) + b * p.ddelta_sb + d * p.ddelta_sd;
    T* dz_out = p.dz ? reinterpret_cast<T*>(p.dz) + b * p.dz_sb + d * p.dz_sd : nullptr;
    const TBC* Bb = reinterpret_cast<const TBC*>(p.B) + b * p.B_sb + g * p.B_sg;
    const TBC* Cb = reinterpret_cast<const TBC*>(p.C) + b * p.C_sb + g * p.C_sg;
    const float* ckpt = reinterpret_cast<const float*>(p.ckpt);
    float* dB = reinterpret_cast<float*>(p.dB) + (b * p.groups + g) * N * L;
    float* dC = reinterpret_cast<float*>(p.dC) + (b * p.groups + g) * N * L;
    const float Dd = p.D ? reinterpret_cast<const float*>(p.D)[d] : 0.f;
    const float bias = p.bias ? reinterpret_cast<const float*>(p.bias)[d] : 0.f;

    for (int n = j; n < N; n += TL) {
        As[cl * NP + n] = reinterpret_cast<const float*>(p.A)[d * N + n];
        qcarry[cl * NP + n] = p.dlast ? reinterpret_cast<const float*>(p.dlast)[(b * p.dim + d) * N + n] : 0.f;
        dAs[cl * NP + n] = 0.f;
    }
    float dD_acc = 0.f, dbias_acc = 0.f;

    for (i64 ch = p.n_ck - 1; ch >= 0; --ch) {
        const i64 tc0 = ch * T_C, t0 = tc0 + j * KX;
        float uu[KX], dl[KX], dy[KX], y[KX], S1[KX], S2[KX];
        {
            float dd[KX];
            load_steps<T, KX>(u, t0, Lv, vec, uu);
            load_steps<T, KX>(delta, t0, Lv, vec, dl);
            load_steps<T, KX>(dout, t0, Lv, vec, dy);
            if (z != nullptr) load_steps<T, KX>(z, t0, Lv, vec, dd);
#pragma unroll
            for (int i = 0; i < KX; ++i) {
                float x = dl[i] + bias;
                if (p.softplus) x = softplus(x);
                dl[i] = (t0 + i < Lv) ? x : 0.f;
                y[i] = Dd * uu[i];
                S1[i] = 0.f;
                S2[i] = 0.f;
                if (z != nullptr) dy[i] *= dd[i] * sigmoid(dd[i]);   // out = y silu(z)

            }
        }
        const float* ck_row = ckpt + ((b * (p.n_ck + 1) + ch) * p.dim + d) * N;

        for (i64 n0 = 0; n0 < N; n0 += NG) {
            __syncthreads();                        // the last group's rows and partials are read
            stage_rows<TBC, NG, KX, TL, NT>(Bs, Bb, p.B_sn, n0, N, tc0, L);
            stage_rows<TBC, NG, KX, TL, NT>(Cs, Cb, p.C_sn, n0, N, tc0, L);
            __syncthreads();
#pragma unroll 1
            for (int k = 0; k < NG; k += SI) {
                const i64 n = n0 + k;
                if (n >= N) break;
                // SI states side by side, as in the forward: a partner past N runs on zero
                // rows with a = 1 and zero state and adjoint, and writes nothing.
                bool live[SI];
                float An[SI], a[SI][KX], ah[SI][KX], P[SI], H[SI];
#pragma unroll
                for (int s = 0; s < SI; ++s) {
                    live[s] = s == 0 || n + s < N;
                    An[s] = live[s] ? As[cl * NP + n + s] : 0.f;
                }
                // states of the chunk from its entry state
                {
                    float bv[SI][KX], a2[SI];
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        a2[s] = An[s] * SS_LOG2E;
                        P[s] = 1.f;
                        H[s] = 0.f;
                        load_row<KX>(Bs + (k + s) * ROW + seg_offset<KX>(j), bv[s]);
                    }
#pragma unroll
                    for (int i = 0; i < KX; ++i) {
#pragma unroll
                        for (int s = 0; s < SI; ++s) {
                            a[s][i] = ex2(dl[i] * a2[s]);
                            H[s] = a[s][i] * H[s] + dl[i] * uu[i] * bv[s][i];
                            P[s] *= a[s][i];
                        }
                    }
                }
                scan_forward<TL, SI>(P, H, j);
                float Pe[SI], He[SI];
#pragma unroll
                for (int s = 0; s < SI; ++s) lanes_before<TL>(P[s], H[s], j, Pe[s], He[s]);
                {
                    float bv[SI][KX], cv[SI][KX], dCv[SI][KX], h[SI];
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        load_row<KX>(Bs + (k + s) * ROW + seg_offset<KX>(j), bv[s]);
                        load_row<KX>(Cs + (k + s) * ROW + seg_offset<KX>(j), cv[s]);
                        h[s] = Pe[s] * (valid && live[s] ? ck_row[n + s] : 0.f) + He[s];
                    }
#pragma unroll
                    for (int i = 0; i < KX; ++i) {
#pragma unroll
                        for (int s = 0; s < SI; ++s) {
                            ah[s][i] = a[s][i] * h[s];             // a_t h_{t-1}
                            h[s] = ah[s][i] + dl[i] * uu[i] * bv[s][i];
                            y[i] += cv[s][i] * h[s];
                            dCv[s][i] = dy[i] * h[s];
                        }
                    }
                    store_warp_partials<CL, TL, KX, NG, SI>(dCv, live, redC, w, k, j, c);
                }
                // adjoint, reverse: lane map q -> P q + H with q = a dh entering from later steps
                float dBv[SI][KX];
                {
                    float bv[SI][KX], cv[SI][KX];
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        load_row<KX>(Bs + (k + s) * ROW + seg_offset<KX>(j), bv[s]);
                        load_row<KX>(Cs + (k + s) * ROW + seg_offset<KX>(j), cv[s]);
                        P[s] = 1.f;
                        H[s] = 0.f;
                    }
#pragma unroll
                    for (int i = KX - 1; i >= 0; --i) {
#pragma unroll
                        for (int s = 0; s < SI; ++s) {
                            H[s] = a[s][i] * (cv[s][i] * dy[i] + H[s]);
                            P[s] *= a[s][i];
                        }
                    }
                    scan_reverse<TL, SI>(P, H, j);
                    float q[SI], dA_part[SI];
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        lanes_after<TL>(P[s], H[s], j, Pe[s], He[s]);
                        q[s] = Pe[s] * (live[s] ? qcarry[cl * NP + n + s] : 0.f) + He[s];
                        dA_part[s] = 0.f;
                    }
#pragma unroll
                    for (int i = KX - 1; i >= 0; --i) {
#pragma unroll
                        for (int s = 0; s < SI; ++s) {
                            const float dh = cv[s][i] * dy[i] + q[s];
                            S1[i] += dh * bv[s][i];
                            const float t2 = dh * ah[s][i];
                            S2[i] += An[s] * t2;
                            dA_part[s] += t2 * dl[i];
                            dBv[s][i] = dh * dl[i] * uu[i];
                            q[s] = a[s][i] * dh;
                        }
                    }
#pragma unroll
                    for (int s = 0; s < SI; ++s) {
                        const float q_first = TL > 1 ? __shfl_sync(0xffffffffu, q[s], 0, TL) : q[s];
                        dA_part[s] = sum_time_lanes<TL>(dA_part[s]);
                        if (j == 0 && live[s]) {                // every lane has read the old carry
                            qcarry[cl * NP + n + s] = q_first;
                            dAs[cl * NP + n + s] += dA_part[s];
                        }
                    }
                }
                store_warp_partials<CL, TL, KX, NG, SI>(dBv, live, redB, w, k, j, c);
            }
            __syncthreads();
            // one atomic add per (block, step, state): the W warps' partials summed here
            for (int e = threadIdx.x; e < NG * T_C; e += NT) {
                const int k = e / T_C, t = e % T_C;
                const i64 n = n0 + k, tt = tc0 + t;
                if (n < N && tt < L) {
                    float sb = 0.f, sc = 0.f;
#pragma unroll
                    for (int ww = 0; ww < W; ++ww) {
                        sb += redB[(ww * NG + k) * T_C + t];
                        sc += redC[(ww * NG + k) * T_C + t];
                    }
                    atomicAdd(dB + n * L + tt, sb);
                    atomicAdd(dC + n * L + tt, sc);
                }
            }
        }
        float gu[KX], gd[KX];
#pragma unroll
        for (int i = 0; i < KX; ++i) {
            gu[i] = dl[i] * S1[i] + Dd * dy[i];
            float g2 = uu[i] * S1[i] + S2[i];
            if (p.softplus) g2 *= -expm1f(-dl[i]);        // sigmoid(x) = 1 - exp(-softplus(x))
            gd[i] = (t0 + i < Lv) ? g2 : 0.f;
            dbias_acc += gd[i];
            dD_acc += dy[i] * uu[i];
        }
        store_steps<T, KX>(du_out, t0, Lv, vec, gu);
        store_steps<T, KX>(ddelta_out, t0, Lv, vec, gd);
        if (z != nullptr) {
            // dz = dout y silu'(z): z and dout read again (cache hits) rather than held in
            // registers through the state loop
            float zz[KX], go[KX];
            load_steps<T, KX>(z, t0, Lv, vec, zz);
            load_steps<T, KX>(dout, t0, Lv, vec, go);
#pragma unroll
            for (int i = 0; i < KX; ++i) {
                const float s = sigmoid(zz[i]);
                go[i] *= y[i] * s * (1.f + zz[i] * (1.f - s));
            }
            store_steps<T, KX>(dz_out, t0, Lv, vec, go);
        }
    }
    dD_acc = sum_time_lanes<TL>(dD_acc);
    dbias_acc = sum_time_lanes<TL>(dbias_acc);
    __syncwarp();
    if (valid) {
        const i64 bd = b * p.dim + d;
        if (j == 0) {
            if (p.dD) reinterpret_cast<float*>(p.dD)[bd] = dD_acc;
            if (p.dbias) reinterpret_cast<float*>(p.dbias)[bd] = dbias_acc;
        }
        for (int n = j; n < N; n += TL) {
            reinterpret_cast<float*>(p.dA)[bd * N + n] = dAs[cl * NP + n];
            if (p.dh0) reinterpret_cast<float*>(p.dh0)[bd * N + n] = qcarry[cl * NP + n];
        }
    }
}

// Every specialization as a template kernel (CI compiles many in one translation unit by
// explicit instantiation), and the loader's one specialization, named by the -D macros, as
// an unmangled entry point.
template <int T, int TBC, int CL, int TL, int KX, int W, int MB, int NG, int SI>
__global__ void __launch_bounds__(W * 32, MB) ss_bwd_kernel(const SsBwdParams p) {
    ss_bwd<typename ss_dtype<T>::T, typename ss_dtype<TBC>::T, CL, TL, KX, W, NG, SI>(p);
}

#ifdef SS_T
extern "C" __global__ void __launch_bounds__(SS_W * 32, SS_MIN_BLOCKS) mimetic_ss_bwd(const SsBwdParams p) {
    ss_bwd<ss_dtype<SS_T>::T, ss_dtype<SS_TBC>::T, SS_CL, SS_TL, SS_KX, SS_W, SS_NG, SS_SI>(p);
}
#endif
