/* Preloaded into a process (LD_PRELOAD) by edgekit.cpuid_mask: the process answers CPUID as a CPU
   of the class EDGEKIT_CPUID_CLASS names (x86-vnni, x86-avx512, x86-avx2, x86-sse), this CPU's
   own answers with the features that class lacks cleared.

   It turns CPUID faulting on (Linux arch_prctl ARCH_SET_CPUID, where the CPU and kernel offer it:
   "cpuid_fault" in /proc/cpuinfo), so each CPUID instruction raises SIGSEGV; the handler runs the
   real CPUID and clears the bits. ONNX Runtime (MLAS), OpenVINO (oneDNN) and numpy then dispatch to
   that class's kernels, at native speed. Where faulting cannot be turned on the process exits (70)
   with a sentence, rather than run unmasked. A SIGSEGV handler the program installs later (Python's
   faulthandler) is kept as the one other faults go to, so ours stays first. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012
#define BIT(n) (1u << (n))

/* what a class lacks, cumulative downwards: each level hides its own and every level above */
enum { HIDE_AMX = 1, HIDE_VNNI = 2, HIDE_AVX512 = 3, HIDE_AVX = 4 };
static int level, installed;
static struct sigaction previous; /* the program's SIGSEGV handler: every fault but CPUID's goes there */

static int real_sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    static int (*real)(int, const struct sigaction *, struct sigaction *);
    if (!real)
        real = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    return real(sig, act, old);
}

/* the program's own calls: for SIGSEGV they set and read the handler ours hands other faults to */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV || !installed)
        return real_sigaction(sig, act, old);
    if (old)
        *old = previous;
    if (act)
        previous = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0)
        return SIG_ERR;
    return old.sa_handler;
}

static void mask(unsigned leaf, unsigned sub, unsigned r[4]) {
    if (leaf == 7 && sub == 0) {
        r[3] &= ~(BIT(22) | BIT(23) | BIT(24) | BIT(25)); /* EDX: AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
        if (level >= HIDE_VNNI) {
            r[1] &= ~BIT(21);                                             /* EBX: AVX512-IFMA */
            r[2] &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));     /* ECX: VBMI VBMI2 VNNI BITALG VPOPCNTDQ */
            r[3] &= ~BIT(8);                                              /* EDX: VP2INTERSECT */
        }
        if (level >= HIDE_AVX512) {
            r[1] &= ~(BIT(16) | BIT(17) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31)); /* AVX512 F DQ PF ER CD BW VL */
            r[3] &= ~(BIT(2) | BIT(3));                                   /* 4VNNIW 4FMAPS */
        }
        if (level >= HIDE_AVX)
            r[1] &= ~BIT(5); /* AVX2 */
    } else if (leaf == 7 && sub == 1) {
        r[0] &= ~BIT(21); /* AMX-FP16 */
        r[3] &= ~BIT(8);  /* AMX-COMPLEX */
        if (level >= HIDE_VNNI) {
            r[0] &= ~(BIT(4) | BIT(5) | BIT(23)); /* AVX-VNNI, AVX512-BF16, AVX-IFMA */
            r[3] &= ~(BIT(4) | BIT(5) | BIT(10)); /* AVX-VNNI-INT8, AVX-NE-CONVERT, AVX-VNNI-INT16 */
        }
    } else if (leaf == 0xd && sub == 0) {
        r[0] &= ~(BIT(17) | BIT(18)); /* AMX tile state */
        if (level >= HIDE_AVX512)
            r[0] &= ~(BIT(5) | BIT(6) | BIT(7)); /* AVX-512 state */
        if (level >= HIDE_AVX)
            r[0] &= ~BIT(2); /* AVX state */
    } else if (leaf == 1 && level >= HIDE_AVX) {
        r[2] &= ~(BIT(12) | BIT(28) | BIT(29)); /* ECX: FMA, AVX, F16C */
    }
}

static void on_segv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *regs = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
    if (ip[0] == 0x0f && ip[1] == 0xa2) { /* CPUID */
        unsigned r[4], leaf = (unsigned)regs[REG_RAX], sub = (unsigned)regs[REG_RCX];
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
        mask(leaf, sub, r);
        regs[REG_RAX] = r[0];
        regs[REG_RBX] = r[1];
        regs[REG_RCX] = r[2];
        regs[REG_RDX] = r[3];
        regs[REG_RIP] += 2;
        return;
    }
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, context);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
    } else { /* any other fault recurs with the default action */
        struct sigaction fallback;
        memset(&fallback, 0, sizeof fallback);
        fallback.sa_handler = SIG_DFL;
        installed = 0;
        real_sigaction(SIGSEGV, &fallback, NULL);
    }
}

__attribute__((constructor)) static void start(void) {
    const char *name = getenv("EDGEKIT_CPUID_CLASS");
    static const char *classes[] = {"", "x86-vnni", "x86-avx512", "x86-avx2", "x86-sse"};
    for (int i = HIDE_AMX; i <= HIDE_AVX; i++)
        if (name && strcmp(name, classes[i]) == 0)
            level = i;
    if (!level) {
        fprintf(stderr, "edgekit: EDGEKIT_CPUID_CLASS=%s is not a class CPUID masking can show.\n", name ? name : "");
        _exit(70);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    real_sigaction(SIGSEGV, &sa, &previous);
    installed = 1;
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "edgekit: this CPU or kernel cannot fault on CPUID, so it cannot run as %s.\n", name);
        _exit(70);
    }
}
