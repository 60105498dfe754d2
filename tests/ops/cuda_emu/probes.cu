// Small kernels that check the CPU emulation itself (tests/ops/test_cuda_emulation.py):
// the shuffles' lane arithmetic, and that each of the emulation's checks fires. Built
// like the emulated scan kernels (tests/ops/cuda_emu/__init__.py), never for a GPU.
#include "simt.h"

typedef unsigned long long u64;
typedef long long i64;

struct ProbeParams {
    u64 in, out;
    i64 n, mode;
};

struct alignas(16) Vec16 {
    unsigned int w[4];
};

extern __shared__ float probe_smem[];

// out[t * 8 + k]: shuffle k of every lane's thread id
__global__ void shuffles(const ProbeParams p) {
    float* out = reinterpret_cast<float*>(p.out);
    const int t = threadIdx.x;
    const float v = (float)t;
    out[t * 8 + 0] = __shfl_sync(0xffffffffu, v, 3, 8);
    out[t * 8 + 1] = __shfl_sync(0xffffffffu, v, 35);
    out[t * 8 + 2] = __shfl_up_sync(0xffffffffu, v, 2, 8);
    out[t * 8 + 3] = __shfl_up_sync(0xffffffffu, v, 5);
    out[t * 8 + 4] = __shfl_down_sync(0xffffffffu, v, 3, 16);
    out[t * 8 + 5] = __shfl_down_sync(0xffffffffu, v, 1);
    out[t * 8 + 6] = __shfl_xor_sync(0xffffffffu, v, 5, 8);
    out[t * 8 + 7] = __shfl_xor_sync(0xffffffffu, v, 12, 8);
}

// out[linear thread id] = its id; out[total] counts the threads with atomicAdd
__global__ void indices(const ProbeParams p) {
    float* out = reinterpret_cast<float*>(p.out);
    const i64 id = ((i64)blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
    out[id] = (float)id;
    atomicAdd(out + (i64)gridDim.x * gridDim.y * blockDim.x, 1.f);
}

// thread 0 writes shared memory that every thread reads: a race unless mode != 0
__global__ void race(const ProbeParams p) {
    if (threadIdx.x == 0) probe_smem[0] = 1.f;
    if (p.mode) __syncthreads();
    reinterpret_cast<float*>(p.out)[threadIdx.x] = probe_smem[0];
}

__global__ void read_past_end(const ProbeParams p) {
    reinterpret_cast<float*>(p.out)[threadIdx.x] = reinterpret_cast<const float*>(p.in)[p.n];
}

__global__ void write_input(const ProbeParams p) { reinterpret_cast<float*>(p.in)[threadIdx.x] = 1.f; }

__global__ void shared_past_end(const ProbeParams p) { probe_smem[p.n] = 1.f; }

__global__ void array_past_end(const ProbeParams p) {
    float a[4] = {1.f, 2.f, 3.f, 4.f};
    reinterpret_cast<float*>(p.out)[threadIdx.x] = a[p.n];
}

__global__ void misaligned_vector(const ProbeParams p) {
    const Vec16 v = *reinterpret_cast<const Vec16*>(reinterpret_cast<const float*>(p.in) + p.n);
    reinterpret_cast<float*>(p.out)[threadIdx.x] = __uint_as_float(v.w[0]);
}

// half a warp at a shuffle, the other half exits
__global__ void partial_shuffle(const ProbeParams p) {
    if ((threadIdx.x & 31) < 16)
        reinterpret_cast<float*>(p.out)[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

// the lanes of a warp at two different shuffles
__global__ void split_shuffle(const ProbeParams p) {
    float v = 0.f;
    if (threadIdx.x & 1)
        v = __shfl_down_sync(0xffffffffu, 1.f, 1);
    else
        v = __shfl_down_sync(0xffffffffu, 2.f, 1);
    reinterpret_cast<float*>(p.out)[threadIdx.x] = v;
}

// __syncthreads reached by one warp only
__global__ void partial_syncthreads(const ProbeParams p) {
    if (threadIdx.x < 32) __syncthreads();
    reinterpret_cast<float*>(p.out)[threadIdx.x] = 1.f;
}

extern "C" int emu_run(const void*, void (*)(const void*), void*, unsigned long long);
alignas(16) float probe_smem[1024];

#define PROBE(name)                                                                                     \
    extern "C" int probe_##name(const void* l) {                                                        \
        return emu_run(l, [](const void* p) { name(*static_cast<const ProbeParams*>(p)); }, probe_smem, \
                       sizeof probe_smem);                                                              \
    }
PROBE(shuffles)
PROBE(indices)
PROBE(race)
PROBE(read_past_end)
PROBE(write_input)
PROBE(shared_past_end)
PROBE(array_past_end)
PROBE(misaligned_vector)
PROBE(partial_shuffle)
PROBE(split_shuffle)
PROBE(partial_syncthreads)
