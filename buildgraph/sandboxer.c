/* The sandbox of an action, made the way bwrap makes it from the same command line, for
 * root only, in half bwrap's CPU (sandboxer.py says why and when it is used).
 *
 * It takes the subset of bwrap's options that sandbox.py writes, with their meaning:
 *   --die-with-parent --new-session --cap-drop ALL --as-pid-1
 *   --unshare-pid --unshare-ipc --unshare-uts --unshare-net --hostname NAME
 *   --ro-bind SRC DEST   --bind SRC DEST   --tmpfs DEST   --dir DEST   --symlink TARGET DEST
 *   --proc DEST   --dev DEST   --chdir DIR   --  COMMAND ARGS...
 * and refuses anything else (exit 125), so a sandbox it cannot make as bwrap would is never
 * made at all. What it leaves out is what costs bwrap: after every bind bwrap reads
 * /proc/self/mountinfo to find the mounts below the new one and remount each; here one
 * mount_setattr(AT_RECURSIVE) call does that in the kernel. And it is linked statically
 * where it can be: no loader runs.
 *
 * As bwrap: a first process stays outside the new pid namespace, waits for the command
 * (the namespace's pid 1, --as-pid-1) and exits with its status (128 + signal if killed);
 * each dies with its parent (--die-with-parent). Every bind is nosuid and nodev
 * (devices under --dev keep dev), --ro-bind read-only, all recursively. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/mount.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The sandbox could not be made: a status of its own, not one a command commonly exits with
 * (bwrap uses 1). */
#define FAILED 125

enum op_kind { NOT_A_MOUNT, RO_BIND, BIND, TMPFS, DIR_, SYMLINK, PROC, DEV };
struct op { enum op_kind kind; const char *a, *b; int src_fd; };   /* a mount step, in order */

/* Every option taken: how many arguments follow it, the mount step it is, the namespace it asks for. */
static const struct option { const char *name; int args; enum op_kind kind; int clone_flag; } OPTIONS[] = {
  { "--ro-bind", 2, RO_BIND, 0 }, { "--bind", 2, BIND, 0 }, { "--symlink", 2, SYMLINK, 0 },
  { "--tmpfs", 1, TMPFS, 0 }, { "--dir", 1, DIR_, 0 }, { "--proc", 1, PROC, 0 }, { "--dev", 1, DEV, 0 },
  { "--unshare-pid", 0, NOT_A_MOUNT, CLONE_NEWPID }, { "--unshare-ipc", 0, NOT_A_MOUNT, CLONE_NEWIPC },
  { "--unshare-uts", 0, NOT_A_MOUNT, CLONE_NEWUTS }, { "--unshare-net", 0, NOT_A_MOUNT, CLONE_NEWNET },
  { "--hostname", 1, NOT_A_MOUNT, 0 }, { "--chdir", 1, NOT_A_MOUNT, 0 }, { "--cap-drop", 1, NOT_A_MOUNT, 0 },
  { "--die-with-parent", 0, NOT_A_MOUNT, 0 }, { "--new-session", 0, NOT_A_MOUNT, 0 },
  { "--as-pid-1", 0, NOT_A_MOUNT, 0 },
};

static void fail(const char *what, const char *path) {
  fprintf(stderr, "sandboxer: %s %s: %s\n", what, path ? path : "", strerror(errno));
  _exit(FAILED);
}

static void refuse(const char *why, const char *arg) {
  fprintf(stderr, "sandboxer: %s %s\n", why, arg ? arg : "");
  _exit(FAILED);
}

/* A destination inside the new root: the paths are absolute, the new root is the cwd. */
static const char *inside(const char *dest) {
  while (*dest == '/') dest++;
  return *dest ? dest : ".";
}

static void make_parents(const char *path) {
  char buf[4096];
  if (strlen(path) >= sizeof buf) refuse("path too long:", path);
  strcpy(buf, path);
  for (char *p = strchr(buf + 1, '/'); p; p = strchr(p + 1, '/')) {
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) fail("mkdir", buf);
    *p = '/';
  }
}

static void make_dir(const char *path) {
  make_parents(path);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) fail("mkdir", path);
}

static void make_file(const char *path) {
  make_parents(path);
  int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0444);
  if (fd < 0 && errno != EEXIST && errno != EISDIR) fail("create", path);
  if (fd >= 0) close(fd);
}

static void set_attrs(const char *path, unsigned long long attrs, unsigned int flags) {
  struct mount_attr attr = { .attr_set = attrs };
  if (syscall(SYS_mount_setattr, AT_FDCWD, path, flags, &attr, sizeof attr) != 0)
    fail("mount_setattr", path);
}

/* `src_fd` was opened before the new root hid the host's paths. */
static void bind_from(int src_fd, const char *dest, unsigned long long attrs, int recursive) {
  char src[64];
  struct stat st;
  snprintf(src, sizeof src, "/proc/self/fd/%d", src_fd);
  if (fstat(src_fd, &st) != 0) fail("stat", src);
  if (S_ISDIR(st.st_mode)) make_dir(dest); else make_file(dest);
  if (mount(src, dest, NULL, MS_BIND | (recursive ? MS_REC : 0), NULL) != 0) fail("bind", dest);
  set_attrs(dest, attrs, recursive ? AT_RECURSIVE : 0);
}

static void mount_tmpfs(const char *dest) {
  make_dir(dest);
  if (mount("tmpfs", dest, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") != 0) fail("tmpfs", dest);
}

static void mount_proc(const char *dest) {
  static const char *read_only[] = { "sys", "sysrq-trigger", "irq", "bus" };
  char path[4096];
  make_dir(dest);
  if (mount("proc", dest, "proc", MS_NOSUID | MS_NOEXEC | MS_NODEV, NULL) != 0) fail("proc", dest);
  for (unsigned i = 0; i < sizeof read_only / sizeof *read_only; i++) {
    snprintf(path, sizeof path, "%s/%s", dest, read_only[i]);
    /* As bwrap: only what is writable now (/proc/sys is not, here) is covered. */
    if (access(path, W_OK) != 0) continue;
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) fail("open", path);
    bind_from(fd, path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0);
    close(fd);
  }
}

static void mount_dev(const char *dest, const int *device_fds) {
  static const char *devices[] = { "null", "zero", "full", "random", "urandom", "tty" };
  static const char *links[][2] = {
    { "/proc/self/fd", "fd" }, { "/proc/self/fd/0", "stdin" }, { "/proc/self/fd/1", "stdout" },
    { "/proc/self/fd/2", "stderr" }, { "/proc/kcore", "core" }, { "pts/ptmx", "ptmx" } };
  char path[4096];
  mount_tmpfs(dest);
  for (unsigned i = 0; i < 6; i++) {
    snprintf(path, sizeof path, "%s/%s", dest, devices[i]);
    bind_from(device_fds[i], path, MOUNT_ATTR_NOSUID, 0);
  }
  for (unsigned i = 0; i < sizeof links / sizeof *links; i++) {
    snprintf(path, sizeof path, "%s/%s", dest, links[i][1]);
    if (symlink(links[i][0], path) != 0) fail("symlink", path);
  }
  snprintf(path, sizeof path, "%s/shm", dest);
  make_dir(path);
  snprintf(path, sizeof path, "%s/pts", dest);
  make_dir(path);
  if (mount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620") != 0)
    fail("devpts", path);
}

static void loopback_up(void) {
  struct ifreq req;
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) fail("socket", NULL);
  memset(&req, 0, sizeof req);
  strcpy(req.ifr_name, "lo");
  if (ioctl(s, SIOCGIFFLAGS, &req) != 0) fail("lo flags", NULL);
  req.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &req) != 0) fail("lo up", NULL);
  close(s);
}

/* As bwrap run by root: no capability left in any set but the bounding set, which stays
 * the host's; no_new_privs keeps an exec (of a file root owns, or with file capabilities)
 * from gaining any back. */
static void drop_capabilities(void) {
  struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
  struct __user_cap_data_struct none[2];
  memset(none, 0, sizeof none);
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) fail("clear ambient", NULL);
  if (syscall(SYS_capset, &header, none) != 0) fail("capset", NULL);
}

static void no_new_privileges(void) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("no_new_privs", NULL);
}

int main(int argc, char **argv) {
  static struct op ops[256];
  int n_ops = 0, die_with_parent = 0, new_session = 0, drop_caps = 0, as_pid_1 = 0;
  int clone_flags = CLONE_NEWNS | SIGCHLD, command = 0;
  const char *hostname = NULL, *chdir_to = NULL;

  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--")) { command = i + 1; break; }
    const struct option *o = NULL;
    for (unsigned k = 0; k < sizeof OPTIONS / sizeof *OPTIONS && !o; k++)
      if (!strcmp(argv[i], OPTIONS[k].name)) o = &OPTIONS[k];
    if (!o) refuse("unknown option", argv[i]);
    if (i + o->args >= argc) refuse("missing argument to", o->name);
    const char *arg = argv[i + 1];
    clone_flags |= o->clone_flag;
    if (o->kind != NOT_A_MOUNT) {
      if (n_ops == sizeof ops / sizeof *ops) refuse("too many mounts at", o->name);
      ops[n_ops++] = (struct op){ o->kind, arg, o->args == 2 ? argv[i + 2] : NULL, -1 };
    } else if (!strcmp(o->name, "--die-with-parent")) die_with_parent = 1;
    else if (!strcmp(o->name, "--new-session")) new_session = 1;
    else if (!strcmp(o->name, "--as-pid-1")) as_pid_1 = 1;
    else if (!strcmp(o->name, "--hostname")) hostname = arg;
    else if (!strcmp(o->name, "--chdir")) chdir_to = arg;
    else if (!strcmp(o->name, "--cap-drop")) {
      if (strcmp(arg, "ALL")) refuse("only --cap-drop ALL, not", arg);
      drop_caps = 1;
    }
    i += o->args;
  }
  if (!command || command >= argc) refuse("no command after --", NULL);
  /* Without --as-pid-1 bwrap keeps an init of its own in the namespace; that is not made here. */
  if (!as_pid_1 || !(clone_flags & CLONE_NEWPID)) refuse("needs --unshare-pid --as-pid-1", NULL);
  if (hostname && !(clone_flags & CLONE_NEWUTS)) refuse("--hostname needs --unshare-uts", NULL);
  if (die_with_parent) prctl(PR_SET_PDEATHSIG, SIGKILL);

  pid_t child = syscall(SYS_clone, clone_flags, NULL);
  if (child < 0) fail("clone", NULL);
  if (child > 0) {   /* outside: wait for the command, exit as it did */
    int status;
    while (waitpid(child, &status, 0) < 0)
      if (errno != EINTR) fail("wait", NULL);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

  if (die_with_parent) prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* Nothing done in here reaches the host's namespace. */
  if (mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) fail("make private", "/");
  /* The host's paths, opened before the new root (a tmpfs on /tmp) hides any of them. */
  static const char *devices[] = { "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty" };
  int device_fds[6];
  for (int i = 0; i < 6; i++)
    if ((device_fds[i] = open(devices[i], O_PATH | O_CLOEXEC)) < 0) fail("open", devices[i]);
  for (int i = 0; i < n_ops; i++)
    if (ops[i].kind == RO_BIND || ops[i].kind == BIND)
      if ((ops[i].src_fd = open(ops[i].a, O_PATH | O_CLOEXEC)) < 0) fail("open", ops[i].a);

  /* The new root: a directory of a tmpfs on /tmp, bound on itself to be a mount of its own
   * (as bwrap's, seen as /newroot in the root's line of mountinfo). */
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, NULL) != 0) fail("tmpfs", "/tmp");
  if (mkdir("/tmp/newroot", 0755) != 0) fail("mkdir", "/tmp/newroot");
  if (mount("/tmp/newroot", "/tmp/newroot", NULL, MS_BIND | MS_REC, NULL) != 0) fail("bind", "/tmp/newroot");
  if (chdir("/tmp/newroot") != 0) fail("chdir", "/tmp/newroot");
  for (int i = 0; i < n_ops; i++) {
    struct op *op = &ops[i];
    switch (op->kind) {
    case RO_BIND:
      bind_from(op->src_fd, inside(op->b), MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 1);
      break;
    case BIND: bind_from(op->src_fd, inside(op->b), MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 1); break;
    case TMPFS: mount_tmpfs(inside(op->a)); break;
    case DIR_: make_dir(inside(op->a)); break;
    case SYMLINK:
      make_parents(inside(op->b));
      if (symlink(op->a, inside(op->b)) != 0) fail("symlink", op->b);
      break;
    case PROC: mount_proc(inside(op->a)); break;
    case DEV: mount_dev(inside(op->a), device_fds); break;
    case NOT_A_MOUNT: break;
    }
    if (op->src_fd >= 0) close(op->src_fd);
  }
  for (int i = 0; i < 6; i++) close(device_fds[i]);
  if (syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot_root", NULL);
  if (umount2(".", MNT_DETACH) != 0) fail("detach the old root", NULL);
  if (chdir(chdir_to ? chdir_to : "/") != 0) fail("chdir", chdir_to);
  if (clone_flags & CLONE_NEWNET) loopback_up();
  if (hostname && sethostname(hostname, strlen(hostname)) != 0) fail("sethostname", hostname);
  if (new_session && setsid() < 0) fail("setsid", NULL);
  if (drop_caps) drop_capabilities();
  no_new_privileges();
  execvp(argv[command], argv + command);
  fail("exec", argv[command]);
}
