/* Who is on the other end of an API connection: uid/gid/pid from SO_PEERCRED (and the
 * supplementary groups from SO_PEERGROUPS) of a Unix socket, and the allow-list check. */
#ifndef FLASHBOX_FIRMWARE_PEER_H
#define FLASHBOX_FIRMWARE_PEER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum { PEER_MAX_GROUPS = 64 };

struct peer {
    bool is_unix;      /* false: loopback TCP, no kernel-vouched identity */
    pid_t pid;         /* as of connect(); may be recycled, log only */
    uid_t uid;
    gid_t gid;
    uint32_t n_groups; /* supplementary groups, capped at PEER_MAX_GROUPS */
    gid_t groups[PEER_MAX_GROUPS];
};

/* Fills p from a connected socket. TCP sockets give is_unix = false and uid/gid -1. */
int peer_from_fd(int fd, struct peer *p, char *err, size_t err_len);
/* Both lists empty: every peer the socket's file permissions let in. Otherwise the uid, or
 * the primary or a supplementary gid, must be listed; TCP peers are then refused because
 * they carry no identity. */
bool peer_allowed(const struct peer *p, const uint32_t *uids, uint32_t n_uids, const uint32_t *gids, uint32_t n_gids);

#endif
