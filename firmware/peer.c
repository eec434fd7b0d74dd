/* Peer credentials of API connections (see peer.h). */
#include "firmware/peer.h"

#include "common/errmsg.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int peer_from_fd(int fd, struct peer *p, char *err, size_t err_len)
{
    memset(p, 0, sizeof *p);
    p->uid = (uid_t)-1;
    p->gid = (gid_t)-1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) return errf(err, err_len, "getsockname: %s", strerror(errno));
    if (ss.ss_family != AF_UNIX) return 0;
    struct ucred cred;
    socklen_t cl = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0 || cl != sizeof cred)
        return errf(err, err_len, "SO_PEERCRED: %s", strerror(errno));
    p->is_unix = true;
    p->pid = cred.pid;
    p->uid = cred.uid;
    p->gid = cred.gid;
    socklen_t gl = sizeof p->groups;
    /* Supplementary groups need Linux 4.13; without them only the primary gid counts. A
     * peer in more groups than fit (ERANGE) is matched on the first PEER_MAX_GROUPS. */
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, p->groups, &gl) == 0) p->n_groups = gl / sizeof(gid_t);
    else if (errno == ERANGE) p->n_groups = 0;
    return 0;
}

static bool listed(uint32_t id, const uint32_t *ids, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id) return true;
    return false;
}

bool peer_allowed(const struct peer *p, const uint32_t *uids, uint32_t n_uids, const uint32_t *gids, uint32_t n_gids)
{
    if (n_uids == 0 && n_gids == 0) return true;
    if (!p->is_unix) return false;
    if (listed((uint32_t)p->uid, uids, n_uids) || listed((uint32_t)p->gid, gids, n_gids)) return true;
    for (uint32_t i = 0; i < p->n_groups; i++)
        if (listed((uint32_t)p->groups[i], gids, n_gids)) return true;
    return false;
}
