/* Resolves the "auto" backend from the board. See backend_pick.h. */
#include "firmware/backend_pick.h"
#include "board/board.h"

#include <stdlib.h>
#include <string.h>

void backend_resolve(struct engine_options *opt)
{
    if (opt->backend != ENGINE_BACKEND_AUTO) return;
    opt->backend = ENGINE_BACKEND_REF;
    struct board *b = calloc(1, sizeof *b);
    char err[256];
    if (!b || board_probe(b, err, sizeof err) != 0) {
        free(b);
        return; /* no Vulkan driver: the reference */
    }
    int i = board_pick(b, opt->device_index, opt->device_uuid, err, sizeof err);
    if (i >= 0 && strcmp(b->gpus[i].type, "cpu") != 0 && !b->gpus[i].unsupported[0]) {
        opt->backend = ENGINE_BACKEND_VULKAN;
        if (opt->device_index < 0 && !opt->device_uuid) opt->device_index = b->gpus[i].vk_index;
    }
    free(b);
}
