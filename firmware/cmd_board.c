/* `flashbox board`: the GPUs the board module found, as JSON (jansson), and which one
 * flashbox would use; --device N or --uuid U shows the pick for that selection. */
#include "board/board.h"
#include "firmware/backend_pick.h"
#include "firmware/commands.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *gpu_json(const struct board *b, const struct board_gpu *g)
{
    json_t *heaps = json_array();
    for (uint32_t i = 0; i < g->n_heaps; i++)
        json_array_append_new(heaps, json_pack("{s:I, s:I, s:b}", "size", (json_int_t)g->heaps[i].size, "budget",
                                               (json_int_t)g->heaps[i].budget, "device_local", g->heaps[i].device_local));
    json_t *o = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o, s:{s:I, s:I, s:i, s:i, s:i}, s:s?}",
                          "index", g->vk_index, "name", g->name, "type", g->type, "driver", g->driver_name,
                          "driver_info", g->driver_info, "vendor_id", "", "device_id", "", "uuid", g->uuid, "match", g->match,
                          "heaps", heaps, "limits", "max_allocation", (json_int_t)g->max_alloc, "max_storage_buffer_range",
                          (json_int_t)g->max_storage_range, "subgroup_size", (int)g->subgroup_size, "shared_memory",
                          (int)g->shared_memory, "max_workgroup_invocations", (int)g->max_workgroup_invocations,
                          "unsupported", g->unsupported[0] ? g->unsupported : NULL);
    char buf[16];
    snprintf(buf, sizeof buf, "0x%04x", g->vendor_id);
    json_object_set_new(o, "vendor_id", json_string(buf));
    snprintf(buf, sizeof buf, "0x%04x", g->device_id);
    json_object_set_new(o, "device_id", json_string(buf));
    snprintf(buf, sizeof buf, "%u.%u.%u", g->api_version >> 22, (g->api_version >> 12) & 0x3ff, g->api_version & 0xfff);
    json_object_set_new(o, "api_version", json_string(buf));
    if (g->drm_index >= 0) {
        const struct board_drm *d = &b->drm[g->drm_index];
        json_object_set_new(o, "drm", json_pack("{s:s, s:s, s:s}", "render_node", d->render_node, "driver", d->driver,
                                                "pci_bus", d->pci_bus));
    } else {
        json_object_set_new(o, "drm", json_null());
    }
    return o;
}

int cmd_board(int argc, char **argv)
{
    int index = -1;
    const char *uuid = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) index = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--uuid") && i + 1 < argc) uuid = argv[++i];
        else {
            fprintf(stderr, "usage: flashbox board [--device N | --uuid HEX]\n");
            return !strcmp(argv[i], "--help") ? 0 : 2;
        }
    }
    struct board b;
    char err[512];
    if (board_probe(&b, err, sizeof err)) {
        fprintf(stderr, "flashbox board: %s\n", err);
        return 1;
    }
    int pick = board_pick(&b, index, uuid, err, sizeof err);
    json_t *gpus = json_array();
    for (uint32_t i = 0; i < b.n_gpus; i++) json_array_append_new(gpus, gpu_json(&b, &b.gpus[i]));
    json_t *drm = json_array();
    for (uint32_t i = 0; i < b.n_drm; i++)
        json_array_append_new(drm, json_pack("{s:s, s:s, s:s, s:i}", "render_node", b.drm[i].render_node, "driver",
                                             b.drm[i].driver, "pci_bus", b.drm[i].pci_bus, "vulkan_index", b.drm[i].vk_index));
    json_t *root = json_pack("{s:o, s:o}", "devices", gpus, "drm_render_nodes", drm);
    json_object_set_new(root, "picked", pick >= 0 ? json_integer(pick) : json_null());
    if (pick < 0) json_object_set_new(root, "pick_error", json_string(err));
    if (pick >= 0) {
        /* What --backend auto takes on this device (the model's size decides on a CPU driver). */
        char why[256];
        const struct board_gpu *g = &b.gpus[pick];
        enum engine_backend be = g->unsupported[0] ? ENGINE_BACKEND_REF : backend_rule(g->type, 0, why, sizeof why);
        if (g->unsupported[0]) snprintf(why, sizeof why, "auto: the device lacks a required feature (%s)", g->unsupported);
        int by_size = !g->unsupported[0] && !strcmp(g->type, "cpu");
        json_object_set_new(root, "auto_backend", json_string(by_size ? "by model size" : be == ENGINE_BACKEND_VULKAN ? "vulkan" : "ref"));
        json_object_set_new(root, "auto_backend_why", json_string(why));
    }
    char *s = json_dumps(root, JSON_INDENT(2));
    if (s) puts(s);
    free(s);
    json_decref(root);
    return pick >= 0 ? 0 : 1;
}
