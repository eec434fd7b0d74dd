/* A ready-made progress callback for the command line: one line on stderr, redrawn in
 * place, only when stderr is a terminal (logs and tests stay clean). */
#include "update/update.h"

#include <stdio.h>
#include <unistd.h>

static const char *phase_word(enum update_phase phase)
{
    switch (phase) {
    case UPDATE_PHASE_HASH: return "hashing";
    case UPDATE_PHASE_VERIFY: return "verifying";
    case UPDATE_PHASE_WRITE: return "writing";
    case UPDATE_PHASE_SELFTEST: return "self-test";
    case UPDATE_PHASE_EVALUATE: return "evaluating";
    case UPDATE_PHASE_ACTIVATE: return "activating slot";
    }
    return "?";
}

void update_progress_tty(void *user, enum update_phase phase, const char *what, uint64_t done, uint64_t total)
{
    (void)user;
    static int tty = -1;
    if (tty < 0) tty = isatty(STDERR_FILENO);
    if (!tty) return;
    if (phase == UPDATE_PHASE_SELFTEST || phase == UPDATE_PHASE_ACTIVATE) {
        fprintf(stderr, "\r\033[K%s %s%s", phase_word(phase), what, done >= total ? " done\n" : " ...");
        fflush(stderr);
        return;
    }
    if (phase == UPDATE_PHASE_EVALUATE) {
        fprintf(stderr, "\r\033[K%s %s: %llu / %llu cases", phase_word(phase), what, (unsigned long long)done,
                (unsigned long long)total);
        if (done >= total) fputc('\n', stderr);
        fflush(stderr);
        return;
    }
    double pct = total ? 100.0 * (double)done / (double)total : 100.0;
    fprintf(stderr, "\r\033[K%s %s: %.1f / %.1f MiB (%.0f%%)", phase_word(phase), what, done / 1048576.0,
            total / 1048576.0, pct);
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
}
