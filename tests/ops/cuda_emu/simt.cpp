// Runtime of the CPU emulation (simt.h): fibers, barriers, warp exchanges, atomics, the
// PTX stand-ins, and the memory checks behind the sanitizer callbacks of the kernel
// translation unit. Compiled without instrumentation and linked into each emulated
// kernel library (tests/ops/cuda_emu/__init__.py builds them).
//
// One launch at a time per process; blocks run one after another on the calling thread,
// the threads of a block as fibers switched by hand (a few instructions: the kernels
// meet at a warp operation every few dozen instructions, so ucontext's signal-mask
// system call per switch would dominate; ucontext stays the fallback off x86-64).
//
// Memory checks: the kernel TU is compiled with -fsanitize=kernel-address and calls for
// every access, which land in the __asan_* functions below: an access must fall inside
// the calling thread's own stack, the block's dynamic shared memory (exactly the bytes
// the launch asked for), or one of the tensors the launch registered (writes only into
// the outputs). UBSan's checks (array bounds, alignment of the 16-byte vector accesses,
// integer overflow, ...) land in the __ubsan_handle_* functions. The first violation
// stops the launch and is reported with the thread, block and code address.
#include "simt.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace {

// What the Python side passes (mirrored by ctypes in __init__.py).
struct EmuRange {
    uint64_t lo, hi;           // [lo, hi) bytes
    int64_t writable;
    const char* name;
};

struct EmuLaunch {
    const void* params;
    uint64_t params_bytes;
    uint32_t grid[3], block[3];
    uint64_t smem_bytes;
    const EmuRange* ranges;
    int64_t n_ranges;
    int64_t order;              // enum Order below
    uint64_t seed;
    char* error;
    uint64_t error_bytes;
};

enum State { kRunnable, kAtSyncThreads, kAtWarpOp, kDone };
const char* const kStateNames[] = {"runnable", "at __syncthreads", "at a warp operation", "exited"};
const char* const kOpNames[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                                "__syncwarp"};

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;      // kStackBytes
    State state = kRunnable;
    unsigned tid = 0;
    emu::Site site{nullptr, 0}; // where it waits
#if !defined(__x86_64__)
    ucontext_t ctx;
#endif
};

struct Warp {
    int arrived = 0;
    emu::WarpOp op = emu::kSyncWarp;
    emu::Site site{nullptr, 0};
    int width = 32;
    unsigned value[32], result[32];
    int arg[32];
};

using KernelFn = void (*)(const void*);

const EmuLaunch* g_launch = nullptr;
KernelFn g_kernel = nullptr;
std::vector<Fiber> g_fibers;
std::vector<Warp> g_warps;
std::vector<int> g_queue;       // round-robin order: runnable fibers, run front to back
size_t g_queue_head = 0;
std::vector<int> g_priority;    // the other orders: the first runnable fiber of this list runs
Fiber* g_cur = nullptr;
void* g_sched_sp = nullptr;
#if !defined(__x86_64__)
ucontext_t g_sched_ctx;
#endif
unsigned g_nthreads = 0, g_done = 0, g_sync_arrived = 0;
emu::Site g_sync_site{nullptr, 0};
dim3 g_block_idx{0, 0, 0};
uintptr_t g_smem_lo = 0, g_smem_hi = 0;
bool g_failed = false;
std::string g_error;
std::mt19937_64 g_rng;
uint32_t g_mxcsr = 0;
uint16_t g_fpucw = 0;

bool same_site(emu::Site a, emu::Site b) { return a.line == b.line && std::strcmp(a.file, b.file) == 0; }

std::string site_str(emu::Site s) {
    if (!s.file) return "?";
    const char* base = std::strrchr(s.file, '/');
    return std::string(base ? base + 1 : s.file) + ":" + std::to_string(s.line);
}

std::string where() {
    char buf[160];
    if (!g_cur) return "outside any thread";
    std::snprintf(buf, sizeof buf, "thread %u of block (%u, %u, %u)", g_cur->tid, g_block_idx.x, g_block_idx.y,
                  g_block_idx.z);
    return buf;
}

// Code address as "lib.so+0x1234" (tests/ops/cuda_emu/__init__.py turns it into a line).
std::string code_address(void* pc) {
    Dl_info info;
    char buf[512];
    if (pc && dladdr(pc, &info) && info.dli_fname) {
        std::snprintf(buf, sizeof buf, " [code %s+0x%lx]", info.dli_fname,
                      (unsigned long)((uintptr_t)pc - (uintptr_t)info.dli_fbase));
        return buf;
    }
    return "";
}

// ----------------------------------------------------------------------------- context switches

#if defined(__x86_64__)
extern "C" void emu_ctx_switch(void** save_sp, void* load_sp);
extern "C" void emu_ctx_entry();
asm(R"(
    .text
    .p2align 4
    .hidden emu_ctx_switch
    .globl emu_ctx_switch
    .type emu_ctx_switch, @function
emu_ctx_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_ctx_switch, .-emu_ctx_switch

    .p2align 4
    .hidden emu_ctx_entry
    .globl emu_ctx_entry
    .type emu_ctx_entry, @function
emu_ctx_entry:
    movq %r12, %rdi
    call emu_fiber_main
    ud2
    .size emu_ctx_entry, .-emu_ctx_entry
)");
#endif

[[noreturn]] void to_scheduler_forever();

void to_scheduler() {
    Fiber* f = g_cur;
#if defined(__x86_64__)
    emu_ctx_switch(&f->sp, g_sched_sp);
#else
    swapcontext(&f->ctx, &g_sched_ctx);
#endif
    if (g_failed) to_scheduler_forever();   // a launch that failed is never resumed; defensive
}

[[noreturn]] void to_scheduler_forever() {
    for (;;) {
        Fiber* f = g_cur;
#if defined(__x86_64__)
        emu_ctx_switch(&f->sp, g_sched_sp);
#else
        swapcontext(&f->ctx, &g_sched_ctx);
#endif
    }
}

void run_fiber(Fiber* f) {
    g_cur = f;
#if defined(__x86_64__)
    emu_ctx_switch(&g_sched_sp, f->sp);
#else
    swapcontext(&g_sched_ctx, &f->ctx);
#endif
    g_cur = nullptr;
}

// Records the first failure; inside a thread, stops it (and so the launch) for good.
void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char* fmt, ...) {
    if (!g_failed) {
        char buf[2048];
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        g_error = buf;
        g_failed = true;
    }
    if (g_cur) to_scheduler_forever();
}

}  // namespace

extern "C" __attribute__((visibility("hidden"), used)) void emu_fiber_main(Fiber* f) {
    g_kernel(g_launch->params);
    f->state = kDone;
    ++g_done;
    to_scheduler_forever();
}

namespace {

#if !defined(__x86_64__)
void fiber_trampoline(unsigned hi, unsigned lo) {
    emu_fiber_main(reinterpret_cast<Fiber*>(((uintptr_t)hi << 32) | lo));
}
#endif

void start_fiber(Fiber* f) {
    if (!f->stack) {
        f->stack = static_cast<char*>(std::malloc(kStackBytes));
        if (!f->stack) {
            std::fprintf(stderr, "emu: out of memory for thread stacks\n");
            std::abort();
        }
    }
#if defined(__x86_64__)
    // the frame emu_ctx_switch pops: control words, r15..r12 (r12 = f), rbx, rbp, return
    // address; after the return %rsp is 16-byte aligned, as emu_ctx_entry's call needs
    uintptr_t top = ((uintptr_t)(f->stack + kStackBytes)) & ~(uintptr_t)15;
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    s[-1] = (uint64_t)&emu_ctx_entry;
    s[-2] = 0;                      // rbp
    s[-3] = 0;                      // rbx
    s[-4] = (uint64_t)f;            // r12
    s[-5] = s[-6] = s[-7] = 0;      // r13, r14, r15
    uint32_t* cw = reinterpret_cast<uint32_t*>(top - 64);
    cw[0] = g_mxcsr;
    cw[1] = g_fpucw;
    f->sp = reinterpret_cast<void*>(top - 64);
#else
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = kStackBytes;
    f->ctx.uc_link = nullptr;
    uintptr_t p = (uintptr_t)f;
    makecontext(&f->ctx, (void (*)())fiber_trampoline, 2, (unsigned)(p >> 32), (unsigned)p);
#endif
    f->state = kRunnable;
}

// Thread orders (EmuLaunch::order). 0 / 1 / 2: the runnable thread first in g_priority
// runs (ascending ids, descending, a random permutation drawn anew at every
// __syncthreads), so one warp runs ahead of the others as far as it can; 3: round robin
// (threads run in the order they became runnable), which keeps warps close together.
enum Order { kAscending = 0, kDescending = 1, kRandom = 2, kRoundRobin = 3 };

void draw_priority() {
    g_priority.resize(g_nthreads);
    for (unsigned t = 0; t < g_nthreads; ++t) g_priority[t] = (int)t;
    if (g_launch->order == kDescending) std::reverse(g_priority.begin(), g_priority.end());
    if (g_launch->order == kRandom) std::shuffle(g_priority.begin(), g_priority.end(), g_rng);
}

// Makes the threads ids runnable.
void release(const std::vector<int>& ids) {
    for (int i : ids) {
        g_fibers[i].state = kRunnable;
        if (g_launch->order == kRoundRobin) g_queue.push_back(i);
    }
}

// The next thread to run, or -1.
int pick() {
    if (g_launch->order == kRoundRobin) {
        if (g_queue_head == g_queue.size()) return -1;
        int id = g_queue[g_queue_head++];
        if (g_queue_head > 4096 && g_queue_head * 2 > g_queue.size()) {
            g_queue.erase(g_queue.begin(), g_queue.begin() + (long)g_queue_head);
            g_queue_head = 0;
        }
        return id;
    }
    for (int id : g_priority)
        if (g_fibers[id].state == kRunnable) return id;
    return -1;
}

// The block's threads grouped by what they do, e.g. "16 at __shfl_xor_sync... (threads 0-15, 32-47)".
std::string describe_waiters() {
    std::vector<std::pair<std::string, std::vector<unsigned>>> groups;
    for (unsigned t = 0; t < g_nthreads; ++t) {
        const Fiber& f = g_fibers[t];
        std::string key = kStateNames[f.state];
        if (f.state == kAtSyncThreads || f.state == kAtWarpOp) key += " (" + site_str(f.site) + ")";
        auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == key; });
        if (it == groups.end()) groups.push_back({key, {t}});
        else it->second.push_back(t);
    }
    std::string out;
    for (const auto& [key, ids] : groups) {
        out += "\n  " + std::to_string(ids.size()) + " threads " + key + ": ";
        int runs = 0;
        for (size_t i = 0; i < ids.size() && runs < 6; ++runs) {
            size_t k = i;
            while (k + 1 < ids.size() && ids[k + 1] == ids[k] + 1) ++k;
            out += (runs ? ", " : "") + std::to_string(ids[i]) + (k > i ? "-" + std::to_string(ids[k]) : "");
            i = k + 1;
        }
        if (runs == 6) out += ", ...";
    }
    return out;
}

void run_block() {
    g_queue.clear();
    g_queue_head = 0;
    g_done = g_sync_arrived = 0;
    for (Warp& w : g_warps) w.arrived = 0;
    std::vector<int> all(g_nthreads);
    for (unsigned t = 0; t < g_nthreads; ++t) {
        g_fibers[t].tid = t;
        start_fiber(&g_fibers[t]);
        all[t] = (int)t;
    }
    draw_priority();
    release(all);
    while (!g_failed) {
        const int id = pick();
        if (id < 0) {
            if (g_done == g_nthreads) return;
            fail("deadlock in block (%u, %u, %u): no thread can run%s", g_block_idx.x, g_block_idx.y,
                 g_block_idx.z, describe_waiters().c_str());
            return;
        }
        run_fiber(&g_fibers[id]);
    }
}

// ----------------------------------------------------------------------------- memory checks

std::string describe_address(uintptr_t a) {
    char buf[256];
    long best = -1;
    std::string text = "outside every tensor, the shared memory and the thread's stack";
    auto consider = [&](uintptr_t lo, uintptr_t hi, const char* name) {
        long dist = a < lo ? (long)(lo - a) : a >= hi ? (long)(a - hi) : 0;
        if (best < 0 || dist < best) {
            best = dist;
            std::snprintf(buf, sizeof buf, "at %s%+ld bytes (it has %lu bytes)", name, (long)(a - lo),
                          (unsigned long)(hi - lo));
            text = buf;
        }
    };
    if (g_smem_hi > g_smem_lo) consider(g_smem_lo, g_smem_hi, "shared memory");
    for (int64_t i = 0; i < g_launch->n_ranges; ++i)
        consider(g_launch->ranges[i].lo, g_launch->ranges[i].hi, g_launch->ranges[i].name);
    return text;
}

inline void check_access(const void* p, size_t n, bool write, void* pc) {
    Fiber* f = g_cur;
    if (!f || g_failed) return;
    const uintptr_t a = (uintptr_t)p;
    if (a >= (uintptr_t)f->stack && a + n <= (uintptr_t)f->stack + kStackBytes) return;
    if (a >= g_smem_lo && a + n <= g_smem_hi) return;
    for (int64_t i = 0; i < g_launch->n_ranges; ++i) {
        const EmuRange& r = g_launch->ranges[i];
        if (a >= r.lo && a + n <= r.hi) {
            if (write && !r.writable)
                fail("write of %zu bytes into the input %s (+%lu bytes) by %s%s", n, r.name,
                     (unsigned long)(a - r.lo), where().c_str(), code_address(pc).c_str());
            return;
        }
    }
    if (a >= (uintptr_t)g_launch->params && a + n <= (uintptr_t)g_launch->params + g_launch->params_bytes) {
        if (write) fail("write into the kernel parameters by %s%s", where().c_str(), code_address(pc).c_str());
        return;
    }
    fail("%s of %zu bytes %s by %s%s", write ? "write" : "read", n, describe_address(a).c_str(), where().c_str(),
         code_address(pc).c_str());
}

}  // namespace

// ----------------------------------------------------------------------------- simt.h API

namespace emu {

dim3 thread_idx() { return dim3{g_cur ? g_cur->tid : 0u, 0, 0}; }
dim3 block_idx() { return g_block_idx; }
dim3 block_dim() { return dim3{g_launch->block[0], g_launch->block[1], g_launch->block[2]}; }
dim3 grid_dim() { return dim3{g_launch->grid[0], g_launch->grid[1], g_launch->grid[2]}; }

void sync_threads(Site site) {
    Fiber* f = g_cur;
    if (g_sync_arrived == 0) {
        g_sync_site = site;
    } else if (!same_site(site, g_sync_site)) {
        fail("__syncthreads at different places: %s at %s, others at %s", where().c_str(), site_str(site).c_str(),
             site_str(g_sync_site).c_str());
    }
    if (g_done) fail("__syncthreads (%s) after threads of the block exited:%s", site_str(site).c_str(),
                     describe_waiters().c_str());
    f->state = kAtSyncThreads;
    f->site = site;
    if (++g_sync_arrived == g_nthreads) {
        g_sync_arrived = 0;
        std::vector<int> ids(g_nthreads);
        for (unsigned t = 0; t < g_nthreads; ++t) ids[t] = (int)t;
        if (g_launch->order == kRandom) draw_priority();
        release(ids);
    }
    to_scheduler();
}

unsigned warp_op(WarpOp op, Site site, unsigned mask, unsigned bits, int arg, int width) {
    Fiber* f = g_cur;
    const unsigned lane = f->tid & 31;
    Warp& w = g_warps[f->tid / 32];
    if (mask != 0xffffffffu)
        fail("%s (%s) with mask 0x%08x: the emulation handles full-warp masks only", kOpNames[op],
             site_str(site).c_str(), mask);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s (%s) with width %d: not a power of two in 1..32", kOpNames[op], site_str(site).c_str(), width);
    if (op != kShflIdx && op != kSyncWarp && (arg < 0 || arg > 31))
        fail("%s (%s) with lane offset %d", kOpNames[op], site_str(site).c_str(), arg);
    if (w.arrived == 0) {
        w.op = op;
        w.site = site;
        w.width = width;
    } else if (w.op != op || !same_site(w.site, site) || w.width != width) {
        fail("lanes of warp %u meet at different warp operations: %s at %s %s (width %d), others at %s %s "
             "(width %d)", f->tid / 32, where().c_str(), kOpNames[op], site_str(site).c_str(), width,
             kOpNames[w.op], site_str(w.site).c_str(), w.width);
    }
    w.value[lane] = bits;
    w.arg[lane] = arg;
    f->state = kAtWarpOp;
    f->site = site;
    if (++w.arrived == 32) {
        // PTX shfl.sync: a source outside the lane's width-segment (above it, for xor, or
        // outside it, for up / down) returns the lane's own value
        for (int l = 0; l < 32; ++l) {
            const int seg_lo = l & ~(w.width - 1), seg_hi = seg_lo + w.width - 1;
            int src = l;
            switch (w.op) {
                case kShflIdx: src = seg_lo + (w.arg[l] & (w.width - 1)); break;
                case kShflUp: src = l - w.arg[l] >= seg_lo ? l - w.arg[l] : l; break;
                case kShflDown: src = l + w.arg[l] <= seg_hi ? l + w.arg[l] : l; break;
                case kShflXor: src = (l ^ w.arg[l]) <= seg_hi ? (l ^ w.arg[l]) : l; break;
                case kSyncWarp: break;
            }
            w.result[l] = w.value[src];
        }
        w.arrived = 0;
        std::vector<int> ids(32);
        for (int l = 0; l < 32; ++l) ids[l] = (int)(f->tid & ~31u) + l;
        release(ids);
    }
    to_scheduler();
    return w.result[lane];
}

float atomic_add_f32(Site site, float* address, float value) {
    (void)site;
    check_access(address, 4, true, __builtin_return_address(0));
    const float old = *address;     // one thread runs at a time: a plain add is atomic
    *address = old + value;
    return old;
}

float f16_to_f32(unsigned short h) {
    _Float16 x;
    std::memcpy(&x, &h, 2);
    return (float)x;
}

unsigned short f32_to_f16(float f) {
    _Float16 x = (_Float16)f;       // round to nearest even, as cvt.rn.f16.f32
    unsigned short h;
    std::memcpy(&h, &x, 2);
    return h;
}

unsigned short f32_to_bf16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fff;    // cvt.rn.bf16.f32: canonical NaN
    u += 0x7fffu + ((u >> 16) & 1u);                        // round to nearest even
    return (unsigned short)(u >> 16);
}

float ex2_approx_ftz(float x) {
    // ex2.approx.ftz.f32: subnormal inputs and results flush to zero; the GPU's relative
    // error (~2^-22) is not modelled (the tests' tolerances allow for it)
    if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
    const float y = std::exp2(x);
    return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

}  // namespace emu

// ----------------------------------------------------------------------------- launch

extern "C" int emu_run(const void* launch_ptr, KernelFn kernel, void* smem, unsigned long long smem_capacity) {
    const EmuLaunch* launch = static_cast<const EmuLaunch*>(launch_ptr);
    g_launch = launch;
    g_kernel = kernel;
    g_failed = false;
    g_error.clear();
    g_rng.seed(launch->seed);
    asm volatile("stmxcsr %0" : "=m"(g_mxcsr));
    asm volatile("fnstcw %0" : "=m"(g_fpucw));
    g_nthreads = launch->block[0] * launch->block[1] * launch->block[2];
    auto finish = [&]() {
        if (launch->error_bytes) {
            std::snprintf(launch->error, launch->error_bytes, "%s", g_error.c_str());
        }
        g_launch = nullptr;
        return g_failed ? 1 : 0;
    };
    if (launch->block[1] != 1 || launch->block[2] != 1 || g_nthreads % 32 || g_nthreads == 0 ||
        g_nthreads > 1024) {
        g_failed = true;
        g_error = "the emulation runs 1-D blocks of whole warps, up to 1024 threads";
        return finish();
    }
    if (launch->smem_bytes > smem_capacity) {
        g_failed = true;
        g_error = "dynamic shared memory of " + std::to_string(launch->smem_bytes) + " bytes exceeds the " +
                  std::to_string(smem_capacity) + " the emulation has";
        return finish();
    }
    if (g_fibers.size() < g_nthreads) g_fibers.resize(g_nthreads);
    g_warps.assign(g_nthreads / 32, Warp{});
    g_smem_lo = (uintptr_t)smem;
    g_smem_hi = g_smem_lo + launch->smem_bytes;
    for (unsigned z = 0; z < launch->grid[2] && !g_failed; ++z)
        for (unsigned y = 0; y < launch->grid[1] && !g_failed; ++y)
            for (unsigned x = 0; x < launch->grid[0] && !g_failed; ++x) {
                g_block_idx = dim3{x, y, z};
                // the GPU leaves shared memory undefined: NaN makes a read before a write show
                float* s = static_cast<float*>(smem);
                std::fill(s, s + launch->smem_bytes / 4, std::nanf(""));
                run_block();
            }
    return finish();
}

// ----------------------------------------------------------------------------- sanitizer callbacks

#define EMU_ASAN_SIZED(n)                                                                                   \
    extern "C" void __asan_load##n##_noabort(void* p) { check_access(p, n, false, __builtin_return_address(0)); } \
    extern "C" void __asan_store##n##_noabort(void* p) { check_access(p, n, true, __builtin_return_address(0)); } \
    extern "C" void __asan_load##n(void* p) { check_access(p, n, false, __builtin_return_address(0)); }           \
    extern "C" void __asan_store##n(void* p) { check_access(p, n, true, __builtin_return_address(0)); }
EMU_ASAN_SIZED(1)
EMU_ASAN_SIZED(2)
EMU_ASAN_SIZED(4)
EMU_ASAN_SIZED(8)
EMU_ASAN_SIZED(16)
extern "C" void __asan_loadN_noabort(void* p, size_t n) { check_access(p, n, false, __builtin_return_address(0)); }
extern "C" void __asan_storeN_noabort(void* p, size_t n) { check_access(p, n, true, __builtin_return_address(0)); }
extern "C" void __asan_loadN(void* p, size_t n) { check_access(p, n, false, __builtin_return_address(0)); }
extern "C" void __asan_storeN(void* p, size_t n) { check_access(p, n, true, __builtin_return_address(0)); }
extern "C" void __asan_handle_no_return() {}

namespace {
struct SourceLocation {
    const char* file;
    uint32_t line, column;
};

void ub_fail(const char* what, const void* data, void* pc) {
    const SourceLocation* loc = static_cast<const SourceLocation*>(data);
    const char* base = loc && loc->file ? std::strrchr(loc->file, '/') : nullptr;
    fail("undefined behaviour (%s) at %s:%u:%u in %s%s", what,
         loc && loc->file ? (base ? base + 1 : loc->file) : "?", loc ? loc->line : 0, loc ? loc->column : 0,
         where().c_str(), code_address(pc).c_str());
}
}  // namespace

#define EMU_UBSAN(name, what)                                                                                   \
    extern "C" void __ubsan_handle_##name(void* data, void*, void*) {                                           \
        ub_fail(what, data, __builtin_return_address(0));                                                       \
    }                                                                                                           \
    extern "C" void __ubsan_handle_##name##_abort(void* data, void*, void*) {                                   \
        ub_fail(what, data, __builtin_return_address(0));                                                       \
    }
EMU_UBSAN(type_mismatch_v1, "misaligned or null pointer access")
EMU_UBSAN(out_of_bounds, "array index out of bounds")
EMU_UBSAN(shift_out_of_bounds, "shift out of bounds")
EMU_UBSAN(add_overflow, "signed integer overflow in +")
EMU_UBSAN(sub_overflow, "signed integer overflow in -")
EMU_UBSAN(mul_overflow, "signed integer overflow in *")
EMU_UBSAN(negate_overflow, "signed integer overflow in unary -")
EMU_UBSAN(divrem_overflow, "division overflow or by zero")
EMU_UBSAN(load_invalid_value, "load of an invalid bool or enum value")
EMU_UBSAN(builtin_unreachable, "__builtin_unreachable reached")
EMU_UBSAN(missing_return, "end of a non-void function reached")
EMU_UBSAN(vla_bound_not_positive, "variable-length array bound not positive")
EMU_UBSAN(pointer_overflow, "pointer arithmetic overflow")
EMU_UBSAN(nonnull_arg, "null argument")
EMU_UBSAN(invalid_builtin, "invalid builtin argument")
EMU_UBSAN(float_cast_overflow, "float to integer conversion overflow")
