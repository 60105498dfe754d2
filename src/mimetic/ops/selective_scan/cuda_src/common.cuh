// Shared pieces of the Mamba-1 selective scan kernels (scan_fwd.cu, scan_bwd.cu), after
// ops/cuda_src/common.cuh (types, conversions, vector loads): shared-memory staging of B / C
// and the hand-written warp-shuffle scans. The loader (cuda.py) puts the two headers before
// each kernel file and passes the specialization as -D macros (see the kernel files).
//
// Thread layout shared by both directions: a block is W warps; a warp is CL channel-lanes x
// TL time-lanes, lane = c * TL + j (time-lanes of one channel adjacent, so the time scans
// are shuffles within a width-TL segment). Thread (warp w, c, j) owns channel w * CL + c
// of the block and KX consecutive steps j * KX .. j * KX + KX - 1 of each chunk of
// T_C = TL * KX steps. The block's C_b = W * CL channels walk the same chunks, so B and C
// (shared by every channel of a group) are staged once per block in shared memory.

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
// order (lane j ends with the composition of lanes 0..j), for S independent maps side by
// side (S states of a pass: their shuffles and compositions interleave).
template <int TL, int S>
SS_INLINE void scan_forward(float (&P)[S], float (&H)[S], int j) {
#pragma unroll
    for (int off = 1; off < TL; off *= 2) {
        float Po[S], Ho[S];
#pragma unroll
        for (int s = 0; s < S; ++s) {
            Po[s] = __shfl_up_sync(0xffffffffu, P[s], off, TL);
            Ho[s] = __shfl_up_sync(0xffffffffu, H[s], off, TL);
        }
        if (j >= off) {
#pragma unroll
            for (int s = 0; s < S; ++s) { H[s] = P[s] * Ho[s] + H[s]; P[s] = P[s] * Po[s]; }
        }
    }
}

// The same in reverse time order (lane j ends with the composition of lanes j..TL-1).
template <int TL, int S>
SS_INLINE void scan_reverse(float (&P)[S], float (&H)[S], int j) {
#pragma unroll
    for (int off = 1; off < TL; off *= 2) {
        float Po[S], Ho[S];
#pragma unroll
        for (int s = 0; s < S; ++s) {
            Po[s] = __shfl_down_sync(0xffffffffu, P[s], off, TL);
            Ho[s] = __shfl_down_sync(0xffffffffu, H[s], off, TL);
        }
        if (j + off < TL) {
#pragma unroll
            for (int s = 0; s < S; ++s) { H[s] = P[s] * Ho[s] + H[s]; P[s] = P[s] * Po[s]; }
        }
    }
}

// The exclusive forms of the two scans' results: the composition of the lanes before lane
// j (after it, in reverse), the identity map at the first lane (the last).
template <int TL>
SS_INLINE void lanes_before(float P, float H, int j, float& Pe, float& He) {
    Pe = P;
    He = H;
    if (TL > 1) {
        Pe = __shfl_up_sync(0xffffffffu, P, 1, TL);
        He = __shfl_up_sync(0xffffffffu, H, 1, TL);
    }
    if (j == 0) { Pe = 1.f; He = 0.f; }
}
template <int TL>
SS_INLINE void lanes_after(float P, float H, int j, float& Pe, float& He) {
    Pe = P;
    He = H;
    if (TL > 1) {
        Pe = __shfl_down_sync(0xffffffffu, P, 1, TL);
        He = __shfl_down_sync(0xffffffffu, H, 1, TL);
    }
    if (j == TL - 1) { Pe = 1.f; He = 0.f; }
}

// Sum over the TL time-lanes (every lane gets it).
template <int TL>
SS_INLINE float sum_time_lanes(float v) {
#pragma unroll
    for (int off = TL / 2; off >= 1; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off, TL);
    return v;
}
