/* Fires one syscall (or a few that belong together) N times, for the kernel tests:
 *   fire ACTION N [PORT]
 *   fire needle_in_flood N    (N opens, the middle one of /etc/shadow)
 * Built with gcc -static by the container rig and run inside a runc container, where
 * busybox cannot make these calls with known arguments. Results are whatever the
 * kernel says; the tests compare the captured events with what was asked for. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>

static struct sockaddr_in loopback(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return addr;
}

static void touch(const char *path)
{
    close(open(path, O_CREAT | O_WRONLY, 0600));
}

static void fire(const char *action, int port)
{
    if (!strcmp(action, "open")) {
        close(syscall(SYS_open, "/tmp/f-open", O_CREAT | O_WRONLY, 0640));
    } else if (!strcmp(action, "openat")) {
        close(openat(AT_FDCWD, "/tmp/f-openat", O_CREAT | O_RDWR, 0600));
    } else if (!strcmp(action, "openat_fail")) {
        openat(AT_FDCWD, "/nonexistent/secret", O_RDONLY);
    } else if (!strcmp(action, "openat2")) {
        struct open_how how = {.flags = O_RDONLY, .resolve = RESOLVE_NO_SYMLINKS};
        close(syscall(SYS_openat2, AT_FDCWD, "/etc/passwd", &how, sizeof(how)));
    } else if (!strcmp(action, "creat")) {
        close(creat("/tmp/f-creat", 0644));
    } else if (!strcmp(action, "unlink")) {
        touch("/tmp/f-unlink");
        syscall(SYS_unlink, "/tmp/f-unlink");
    } else if (!strcmp(action, "unlinkat")) {
        touch("/tmp/f-unlinkat");
        unlinkat(AT_FDCWD, "/tmp/f-unlinkat", 0);
    } else if (!strcmp(action, "rename")) {
        touch("/tmp/f-a");
        syscall(SYS_rename, "/tmp/f-a", "/tmp/f-b");
    } else if (!strcmp(action, "renameat2")) {
        touch("/tmp/f-a");
        syscall(SYS_renameat2, AT_FDCWD, "/tmp/f-a", AT_FDCWD, "/tmp/f-b", 0);
    } else if (!strcmp(action, "link")) {
        touch("/tmp/f-a");
        syscall(SYS_link, "/tmp/f-a", "/tmp/f-link");
        unlinkat(AT_FDCWD, "/tmp/f-link", 0);
    } else if (!strcmp(action, "linkat")) {
        touch("/tmp/f-a");
        linkat(AT_FDCWD, "/tmp/f-a", AT_FDCWD, "/tmp/f-link", 0);
        unlinkat(AT_FDCWD, "/tmp/f-link", 0);
    } else if (!strcmp(action, "symlink")) {
        syscall(SYS_symlink, "/etc/shadow", "/tmp/f-sym");
        unlinkat(AT_FDCWD, "/tmp/f-sym", 0);
    } else if (!strcmp(action, "symlinkat")) {
        symlinkat("/etc/shadow", AT_FDCWD, "/tmp/f-sym");
        unlinkat(AT_FDCWD, "/tmp/f-sym", 0);
    } else if (!strcmp(action, "chmod")) {
        touch("/tmp/f-mode");
        syscall(SYS_chmod, "/tmp/f-mode", 04755);
    } else if (!strcmp(action, "fchmodat")) {
        touch("/tmp/f-mode");
        fchmodat(AT_FDCWD, "/tmp/f-mode", 0751, 0);
    } else if (!strcmp(action, "mkdir")) {
        syscall(SYS_mkdir, "/tmp/f-dir", 0700);
        rmdir("/tmp/f-dir");
    } else if (!strcmp(action, "mkdirat")) {
        mkdirat(AT_FDCWD, "/tmp/f-dir", 0750);
        rmdir("/tmp/f-dir");
    } else if (!strcmp(action, "mknod")) {
        syscall(SYS_mknod, "/tmp/f-fifo", S_IFIFO | 0600, 0);
        unlinkat(AT_FDCWD, "/tmp/f-fifo", 0);
    } else if (!strcmp(action, "mknodat")) {
        mknodat(AT_FDCWD, "/tmp/f-fifo", S_IFIFO | 0640, 0);
        unlinkat(AT_FDCWD, "/tmp/f-fifo", 0);
    } else if (!strcmp(action, "socket")) {
        close(socket(AF_INET, SOCK_DGRAM, 0));
    } else if (!strcmp(action, "connect")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = loopback(port);
        connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        close(fd);
    } else if (!strcmp(action, "connect_unix")) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = "/tmp/no-such.sock"};
        connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        close(fd);
    } else if (!strcmp(action, "bind_listen")) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = loopback(port);
        bind(fd, (struct sockaddr *)&addr, sizeof(addr));
        listen(fd, 7);
        close(fd);
    } else if (!strcmp(action, "accept")) {
        /* A listener and a client of our own: each round connects and accepts once. */
        static int listener = -1;
        struct sockaddr_in addr = loopback(port);
        if (listener < 0) {
            int one = 1;
            listener = socket(AF_INET, SOCK_STREAM, 0);
            setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
            bind(listener, (struct sockaddr *)&addr, sizeof(addr));
            listen(listener, 64);
        }
        int client = socket(AF_INET, SOCK_STREAM, 0);
        connect(client, (struct sockaddr *)&addr, sizeof(addr));
        struct sockaddr_in peer;
        socklen_t len = sizeof(peer);
        close(accept4(listener, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC));
        close(client);
    } else if (!strcmp(action, "ptrace")) {
        ptrace(PTRACE_ATTACH, 999999, 0, 0);
    } else if (!strcmp(action, "mount")) {
        mount("none", "/mnt", "tmpfs", MS_NOSUID, NULL);
    } else if (!strcmp(action, "umount2")) {
        umount2("/mnt", MNT_DETACH);
    } else if (!strcmp(action, "setns")) {
        setns(-1, CLONE_NEWNET);
    } else if (!strcmp(action, "unshare")) {
        unshare(CLONE_NEWUTS);
    } else if (!strcmp(action, "init_module")) {
        syscall(SYS_init_module, "\177ELF", 4, "debug=1");
    } else if (!strcmp(action, "finit_module")) {
        syscall(SYS_finit_module, -1, "debug=1", 0);
    } else if (!strcmp(action, "bpf")) {
        syscall(SYS_bpf, 5 /* BPF_PROG_LOAD */, NULL, 0);
    } else if (!strcmp(action, "memfd_create")) {
        close(memfd_create("mayfly-memfd", MFD_CLOEXEC));
    } else if (!strcmp(action, "setuid")) {
        setuid(0);
    } else if (!strcmp(action, "setgid")) {
        setgid(0);
    } else if (!strcmp(action, "setresuid")) {
        setresuid(0, 0, 0);
    } else if (!strcmp(action, "setresgid")) {
        setresgid(0, 0, 0);
    } else if (!strcmp(action, "capset")) {
        struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
        struct __user_cap_data_struct data[2];
        syscall(SYS_capget, &header, data);
        syscall(SYS_capset, &header, data);
    } else if (!strcmp(action, "prctl")) {
        prctl(PR_SET_NAME, "fired", 0, 0, 0);
    } else if (!strcmp(action, "dup_stdio")) {
        int fd = open("/dev/null", O_RDONLY);
        dup2(fd, 0);
        dup3(fd, 0, 0);
        close(fd);
    } else if (!strcmp(action, "pipe")) {
        int fds[2], pair[2], legacy[2];
        pipe2(fds, O_CLOEXEC);
        socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
        syscall(SYS_pipe, legacy);
        close(legacy[0]);
        close(legacy[1]);
        dup2(fds[1], 1); /* stdout into the pipe: the record names what fd 1 now is */
        close(fds[0]);
        close(fds[1]);
        close(pair[0]);
        close(pair[1]);
    } else if (!strcmp(action, "redirect_stdio")) {
        /* What a reverse shell does: stdin and stdout onto a TCP connection. */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in addr = loopback(port);
        connect(fd, (struct sockaddr *)&addr, sizeof(addr));
        dup2(fd, 0);
        dup2(fd, 1);
        close(fd);
    } else if (!strcmp(action, "dup")) {
        int fd = openat(AT_FDCWD, "/tmp/f-dup", O_CREAT | O_RDWR, 0600);
        int copy = dup(fd);
        int high = fcntl(fd, F_DUPFD, 40);
        close(high);
        close(copy);
        close(fd);
    } else if (!strcmp(action, "execveat")) {
        pid_t child = fork();
        if (child == 0) {
            char *args[] = {"true", "from-execveat", NULL};
            syscall(SYS_execveat, AT_FDCWD, "/bin/true", args, NULL, 0);
            _exit(127);
        }
        waitpid(child, NULL, 0);
    } else if (!strcmp(action, "getppid")) {
        syscall(SYS_getppid);
    } else {
        fprintf(stderr, "unknown action %s\n", action);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: fire ACTION N [PORT]\n");
        return 2;
    }
    int n = atoi(argv[2]);
    int port = argc > 3 ? atoi(argv[3]) : 0;
    if (!strcmp(argv[1], "needle_in_flood")) {
        /* N opens as fast as they go, one of them (the middle one) of /etc/shadow. */
        for (int i = 0; i < n; i++)
            close(openat(AT_FDCWD, i == n / 2 ? "/etc/shadow" : "/tmp/f-flood", O_RDONLY | O_CREAT, 0600));
        return 0;
    }
    for (int i = 0; i < n; i++)
        fire(argv[1], port);
    return 0;
}
