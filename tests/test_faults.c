/* Faults around the appliance (issue 21): paths that are not regular files are refused at
 * once (safe_open and every user-named file behind it). The daemon-level fault tests live
 * in test_serve_admin.c. */
#include "common/safe_open.h"
#include "firmware/config.h"
#include "tests/harness.h"
#include "tests/update_support.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* A listening Unix socket bound at path (kept open by the caller). */
static int bind_socket(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof sa.sun_path) return -1;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 1) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

TEST(safe_open_refuses_fifo_dir_socket_device_and_says_what_it_is)
{
    const char *t = test_tmpdir();
    char fifo[600], sock[600], file[600], link[600], err[1024];
    snprintf(fifo, sizeof fifo, "%s/pipe", t);
    snprintf(sock, sizeof sock, "/tmp/flashbox-faults-%d.sock", (int)getpid()); /* sun_path: 108 bytes */
    snprintf(file, sizeof file, "%s/plain", t);
    snprintf(link, sizeof link, "%s/link", t);
    REQUIRE(mkfifo(fifo, 0600) == 0);
    int lfd = bind_socket(sock);
    REQUIRE(lfd >= 0);
    FILE *f = fopen(file, "w");
    REQUIRE(f != NULL);
    fputs("x", f);
    fclose(f);
    REQUIRE(symlink(file, link) == 0);

    /* A FIFO with no writer: a plain open() would block here forever. Read and write side. */
    CHECK_EQ_INT(safe_open(fifo, O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, fifo) != NULL && strstr(err, "is a FIFO (named pipe), not a regular file") != NULL);
    CHECK_EQ_INT(errno, EINVAL);
    CHECK_EQ_INT(safe_open(fifo, O_WRONLY | O_TRUNC, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a FIFO") != NULL);
    CHECK_EQ_INT(safe_open(t, O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a directory") != NULL);
    CHECK_EQ_INT(safe_open(t, O_WRONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a directory") != NULL);
    CHECK_EQ_INT(safe_open(sock, O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a socket") != NULL);
    CHECK_EQ_INT(safe_open("/dev/null", O_RDONLY, 0, err, sizeof err), -1);
    CHECK(strstr(err, "/dev/null: is a character device") != NULL);
    /* A missing file keeps open's errno and message. */
    char missing[700];
    snprintf(missing, sizeof missing, "%s/none", t);
    CHECK_EQ_INT(safe_open(missing, O_RDONLY, 0, err, sizeof err), -1);
    CHECK_EQ_INT(errno, ENOENT);
    CHECK(strstr(err, "No such file") != NULL);
    /* A symlink: followed by default, refused with O_NOFOLLOW (a managed directory). */
    int fd = safe_open(link, O_RDONLY, 0, err, sizeof err);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    CHECK_EQ_INT(safe_open(link, O_WRONLY | O_TRUNC | O_NOFOLLOW, 0, err, sizeof err), -1);
    CHECK(strstr(err, "is a symbolic link") != NULL);
    /* A regular file opens, and its descriptor is blocking and close-on-exec again. */
    fd = safe_open(file, O_RDWR, 0, err, sizeof err);
    REQUIRE(fd >= 0);
    CHECK_EQ_INT(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
    CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    close(fd);
    close(lfd);
    unlink(sock);
}

TEST(config_file_that_is_a_fifo_is_refused_at_once)
{
    char fifo[600], err[1024];
    snprintf(fifo, sizeof fifo, "%s/flashbox.conf", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0);
    struct serve_config c;
    config_default(&c);
    CHECK_EQ_INT(config_load_file(&c, fifo, err, sizeof err), -1);
    CHECK(strstr(err, "is a FIFO") != NULL);
}

TEST(update_verify_of_a_fifo_returns_at_once_with_a_clear_error)
{
    struct upd_box b;
    REQUIRE(upd_box_init(&b) == 0);
    char fifo[700], out[4096];
    snprintf(fifo, sizeof fifo, "%s/bundle.fbx", test_tmpdir());
    REQUIRE(mkfifo(fifo, 0600) == 0);
    /* `timeout` turns the old hang into exit status 124 instead of a stuck test run. */
    int rc = upd_sh(out, sizeof out, "timeout 30 %s update verify %s --data-dir %s --keys %s", test_flashbox_bin(), fifo,
                    b.data, b.keys);
    CHECK_EQ_INT(rc, 1);
    CHECK(strstr(out, "is a FIFO (named pipe), not a regular file") != NULL);
    if (test_failed()) fprintf(stderr, "output: %s\n", out);
    /* The same for install, and for a key file that is a FIFO in the key directory's place. */
    rc = upd_sh(out, sizeof out, "timeout 30 %s update install %s --data-dir %s --keys %s", test_flashbox_bin(), fifo,
                b.data, b.keys);
    CHECK_EQ_INT(rc, 1);
    CHECK(strstr(out, "is a FIFO") != NULL);
    rc = upd_sh(out, sizeof out, "timeout 30 %s bundle create --key %s --product p --version 1 --epoch 1 --model %s "
                "--out %s/x.fbx", test_flashbox_bin(), fifo, fifo, test_tmpdir());
    CHECK(rc != 0 && rc != 124);
    CHECK(strstr(out, "is a FIFO") != NULL);
    if (test_failed()) fprintf(stderr, "output: %s\n", out);
}
