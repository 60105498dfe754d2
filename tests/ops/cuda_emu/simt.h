// CPU emulation of the CUDA features the selective scan kernels use, so that the kernel
// sources (src/mimetic/ops/selective_scan/cuda_src) compile with g++ and run on the CPU
// in the tests (tests/ops/test_cuda_selective_scan_emulated.py).
//
// Included before common.cuh with -DMIMETIC_CPU_EMULATION (common.cuh then maps its
// inline PTX to the emu:: functions declared here). Every CUDA thread of a block runs as
// its own fiber, blocks one after another (runtime: simt.cpp). A fiber runs until it
// waits: at __syncthreads (all threads of the block), or at a warp operation (a shuffle
// or __syncwarp: all 32 lanes of its warp, at the same call site, with the same kind and
// width). So lanes are never assumed to run in lockstep: code that relies on it reads
// stale values under one of the thread orders the tests run (one warp running ahead of
// the others as far as it can, in ascending, descending or random thread priority, or
// round robin), and a lane that skips a warp operation deadlocks (reported).
#pragma once

#ifndef MIMETIC_CPU_EMULATION
#error "simt.h is for the CPU emulation: compile with -DMIMETIC_CPU_EMULATION"
#endif

#include <cmath>
#include <cstring>

struct dim3 {
    unsigned int x, y, z;
};

namespace emu {

struct Site {            // a call site, to check that a warp's lanes meet at the same one
    const char* file;
    int line;
};

enum WarpOp : int { kShflIdx = 0, kShflUp = 1, kShflDown = 2, kShflXor = 3, kSyncWarp = 4 };

dim3 thread_idx();
dim3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void sync_threads(Site site);
unsigned warp_op(WarpOp op, Site site, unsigned mask, unsigned bits, int arg, int width);
float atomic_add_f32(Site site, float* address, float value);

// The inline PTX of common.cuh: cvt.f32.f16, cvt.rn.bf16.f32, cvt.rn.f16.f32, ex2.approx.ftz.f32.
float f16_to_f32(unsigned short h);
unsigned short f32_to_bf16(float f);
unsigned short f32_to_f16(float f);
float ex2_approx_ftz(float x);

template <typename T>
inline T shfl(WarpOp op, Site site, unsigned mask, T value, int arg, int width = 32) {
    static_assert(sizeof(T) == 4, "the emulated shuffles move 32-bit values");
    unsigned bits;
    std::memcpy(&bits, &value, 4);
    bits = warp_op(op, site, mask, bits, arg, width);
    T out;
    std::memcpy(&out, &bits, 4);
    return out;
}

inline void sync_warp(Site site, unsigned mask = 0xffffffffu) { warp_op(kSyncWarp, site, mask, 0u, 0, 32); }

}  // namespace emu

#define EMU_SITE (::emu::Site{__FILE__, __LINE__})

#define __device__
#define __global__
#define __shared__
#define __launch_bounds__(...)

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())

#define __syncthreads() ::emu::sync_threads(EMU_SITE)
#define __syncwarp(...) ::emu::sync_warp(EMU_SITE, ##__VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl(::emu::kShflIdx, EMU_SITE, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl(::emu::kShflUp, EMU_SITE, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl(::emu::kShflDown, EMU_SITE, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl(::emu::kShflXor, EMU_SITE, __VA_ARGS__)
#define atomicAdd(address, value) ::emu::atomic_add_f32(EMU_SITE, address, value)

inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
