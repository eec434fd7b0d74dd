/* The board module and the device choice: `flashbox board` reports the devices as JSON with
 * the limits the backend depends on, its pick agrees with the engine's, and bad selections
 * get clear errors. Skipped when there is no Vulkan at all. */
#include <jansson.h>
#include <stdlib.h>

#include "board/board.h"
#include "engine/vulkan/vk_device.h"
#include "tests/harness.h"

static int probe_or_skip(struct board *b)
{
    char err[512];
    if (board_probe(b, err, sizeof err)) {
        if (strstr(err, "no Vulkan driver")) test_skip(err);
        test_fail_at(__FILE__, __LINE__, "%s", err);
        return -1;
    }
    if (b->n_gpus == 0) test_skip("no Vulkan device");
    return 0;
}

TEST(board_pick_agrees_with_the_engine_device_choice)
{
    struct board b;
    if (probe_or_skip(&b)) return;
    char err[512];
    REQUIRE(b.picked >= 0);
    struct vk_device *d;
    REQUIRE(vk_device_create(&d, -1, NULL, err, sizeof err) == 0);
    CHECK_EQ_INT(d->index, b.gpus[b.picked].vk_index);
    CHECK_EQ_INT(d->max_range, b.gpus[b.picked].max_storage_range);
    CHECK_EQ_INT(d->subgroup_size, b.gpus[b.picked].subgroup_size);
    vk_device_destroy(d);
    /* the same device chosen by uuid */
    REQUIRE(vk_device_create(&d, -1, b.gpus[b.picked].uuid, err, sizeof err) == 0);
    CHECK_EQ_INT(d->index, b.gpus[b.picked].vk_index);
    vk_device_destroy(d);
    CHECK_EQ_INT(board_pick(&b, -1, b.gpus[b.picked].uuid, err, sizeof err), b.picked);
}

TEST(device_selection_errors_name_what_is_wrong)
{
    struct board b;
    if (probe_or_skip(&b)) return;
    char err[512];
    struct vk_device *d;
    CHECK(vk_device_create(&d, 99, NULL, err, sizeof err) != 0);
    CHECK(strstr(err, "device index 99") != NULL);
    CHECK(vk_device_create(&d, -1, "not-a-uuid", err, sizeof err) != 0);
    CHECK(strstr(err, "expected 32 hex digits") != NULL);
    CHECK(vk_device_create(&d, -1, "00000000-0000-0000-0000-000000000001", err, sizeof err) != 0);
    CHECK(strstr(err, "no Vulkan device has uuid") != NULL);
    CHECK(board_pick(&b, 99, NULL, err, sizeof err) < 0);
    CHECK(strstr(err, "device index 99") != NULL);
}

TEST(flashbox_board_prints_devices_limits_and_the_pick_as_json)
{
    struct board b;
    if (probe_or_skip(&b)) return;
    char cmd[1024], path[512];
    snprintf(path, sizeof path, "%s/board.json", test_tmpdir());
    snprintf(cmd, sizeof cmd, "%s board > %s", test_flashbox_bin(), path);
    REQUIRE(system(cmd) == 0);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    REQUIRE(root != NULL);
    json_t *devs = json_object_get(root, "devices");
    CHECK_EQ_INT(json_array_size(devs), b.n_gpus);
    CHECK_EQ_INT(json_integer_value(json_object_get(root, "picked")), b.picked);
    json_t *dev = json_array_get(devs, (size_t)b.picked);
    json_t *limits = json_object_get(dev, "limits");
    CHECK_EQ_INT(json_integer_value(json_object_get(limits, "max_storage_buffer_range")), b.gpus[b.picked].max_storage_range);
    CHECK(json_integer_value(json_object_get(limits, "max_allocation")) > 0);
    CHECK(json_integer_value(json_object_get(limits, "subgroup_size")) > 0);
    CHECK(json_array_size(json_object_get(dev, "heaps")) > 0);
    CHECK_STR(json_string_value(json_object_get(dev, "uuid")), b.gpus[b.picked].uuid);
    json_decref(root);
    /* an impossible selection fails with a message and a nonzero status */
    snprintf(cmd, sizeof cmd, "%s board --device 99 > %s 2>&1", test_flashbox_bin(), path);
    CHECK(system(cmd) != 0);
}
