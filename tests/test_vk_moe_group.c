/* moe_group (the kernel that sorts a step's routed slots into one list per expert used)
 * against the lists built the plain way on the host (vk_test_group_lists): every first
 * index, every slot in its list's place (ascending within a list, as abi.h promises and the
 * grouped matvec's tiles walk them), every used list's expert, and no word written past
 * them in a buffer of the session's size (2 * n_expert + 1 + n_slots ints). Skipped
 * without any Vulkan device. */
#include <stdlib.h>

#include "engine/vulkan/vk_forward.h"
#include "shaders/abi.h"
#include "tests/vk_fixture.h"

#define GROUP_GUARD (-77) /* what the output buffer holds before the kernel runs */

enum pick_mode {
    PICK_UNIFORM, /* k distinct experts a token, any expert alike */
    PICK_SKEWED,  /* three in four picks from the first third: repeats, many experts unused */
    PICK_SAME,    /* every token picks experts 0 .. k - 1: k lists of n_tok slots */
};

struct group_case {
    uint32_t n_expert, k, n_tok;
    enum pick_mode mode;
};

static uint32_t rand_below(uint64_t *rng, uint32_t n)
{
    *rng = *rng * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)((*rng >> 33) % n);
}

/* Slot z = t * k + j picks ids[z]; a token's k experts are distinct, as the router's are. */
static void pick_experts(const struct group_case *c, uint64_t *rng, int32_t *ids)
{
    for (uint32_t t = 0; t < c->n_tok; t++)
        for (uint32_t j = 0; j < c->k; j++) {
            int32_t *id = &ids[t * c->k + j];
            bool again = true;
            while (again) {
                if (c->mode == PICK_SAME) *id = (int32_t)j;
                else if (c->mode == PICK_SKEWED && rand_below(rng, 4) != 0) *id = (int32_t)rand_below(rng, c->n_expert / 3);
                else *id = (int32_t)rand_below(rng, c->n_expert);
                again = false;
                for (uint32_t i = 0; i < j; i++) again = again || ids[t * c->k + i] == *id;
            }
        }
}

/* Runs moe_group on one case; 0 when it ran (failures are reported here), -1 on a device error. */
static int check_case(struct vk_fixture *f, const struct group_case *c, uint64_t seed)
{
    const uint32_t E = c->n_expert, S = c->n_tok * c->k, G = S < E ? S : E; /* n_grp as moe_layer sets it */
    const uint32_t n_out = 2 * E + 1 + S;                                  /* the session's grp buffer */
    int32_t *ids = malloc((size_t)S * 4), *want = malloc((size_t)n_out * 4), *got = malloc((size_t)n_out * 4);
    int rc = -1;
    if (!ids || !want || !got) {
        snprintf(f->err, sizeof f->err, "out of memory");
        goto out;
    }
    uint64_t rng = seed;
    pick_experts(c, &rng, ids);
    for (uint32_t i = 0; i < n_out; i++) want[i] = got[i] = GROUP_GUARD;
    const uint32_t used = vk_test_group_lists(ids, E, S, G, want);
    struct vk_span si, so;
    const struct vk_span *b[2] = { &si, &so };
    struct abi_moe_group_push p = { .n_expert = E, .n_slots = S, .n_grp = G };
    if (vk_fixture_put(f, ids, (uint64_t)S * 4, &si) || vk_fixture_put(f, got, (uint64_t)n_out * 4, &so) ||
        vk_recorder_begin(f->rec, f->err, sizeof f->err) ||
        vk_op_dispatch(f->rec, &f->ops, &f->ops.moe_group, b, &p, 1, 1, 1, f->err, sizeof f->err) ||
        vk_recorder_submit(f->rec, f->err, sizeof f->err) ||
        vk_span_download(f->d, &so, 0, got, (uint64_t)n_out * 4, f->err, sizeof f->err))
        goto out;
    rc = 0;
    /* the kernel leaves the empty lists' expert entries alone, as the host does: every word
     * of the buffer must match, the guard past the layout included */
    for (uint32_t i = 0; i < n_out; i++) {
        if (got[i] == want[i]) continue;
        const char *part = i <= G ? "first index of list" : i < G + 1 + S ? "slot at list place" : "expert of list";
        const uint32_t at = i <= G ? i : i < G + 1 + S ? i - G - 1 : i - G - 1 - S;
        test_fail_at(__FILE__, __LINE__, "E %u k %u tokens %u (%u lists, %u used): word %u (%s %u) is %d, expected %d", E, c->k,
                     c->n_tok, G, used, i, part, at, got[i], want[i]);
        break;
    }
out:
    free(ids); free(want); free(got);
    return rc;
}

TEST(vk_moe_group_lists_every_slot_by_expert_in_slot_order)
{
    struct vk_fixture f;
    if (vk_fixture_open(&f)) return;
    static const struct group_case cases[] = {
        { 16, 6, 1, PICK_UNIFORM },                      /* decode: one token, fewer slots than experts */
        { 16, 3, 5, PICK_SKEWED },                       /* a few tokens: repeats, unused experts */
        { 8, 4, 9, PICK_UNIFORM },                       /* more slots than experts: n_grp = n_expert */
        { 70, 6, 4, PICK_SAME },                         /* every token the same experts */
        { 256, 6, VK_MOE_GROUP_MIN_TOKENS, PICK_SKEWED }, /* where GPUs start grouping */
        { 256, 6, 64, PICK_SKEWED },                     /* a prefill batch: empty lists past the used ones */
        { ABI_ROUTER_MAX_EXPERTS, ABI_ROUTER_MAX_K, VK_BATCH, PICK_UNIFORM }, /* the largest the kernel takes */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (check_case(&f, &cases[i], 1000 + i)) {
            test_fail_at(__FILE__, __LINE__, "case %zu: %s", i, f.err);
            break;
        }
    vk_fixture_close(&f);
}
