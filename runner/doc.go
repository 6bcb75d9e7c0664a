// Package runner runs a process inside an already-mounted root filesystem
// (a container's union view), the way a minimal container runtime does:
// its own mount, PID, UTS and IPC namespaces (and network, for
// --network none), the view as "/" through pivot_root, the kernel
// filesystems, a small init as PID 1, and the command's exit code back.
//
// It is not a security boundary: the command runs as real root (or the
// user it is given) with every capability, no seccomp filter, no cgroup
// limits and no user namespace. It is for running image tools and builds
// in a container's view, not for running untrusted code.
//
// # Using it
//
//	code, err := runner.Run(runner.Spec{
//		Rootfs:   "/var/lib/strata/containers/ID/mnt", // mounted by the caller
//		StateDir: "/var/lib/strata/containers/ID",
//		Args:     []string{"sh", "-c", "echo hi"},
//		Hostname: "abc123",
//		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
//	})
//
// err is strata's own failure (bad spec, unknown user, a mount that failed);
// then nothing ran and nothing is left. Otherwise code is the command's exit
// status, 128+N if it died of signal N, 127 if the command is not found in
// the image and 126 if it is found but cannot be executed (as shells do;
// the reason goes to the command's stderr).
//
// Run also forwards every signal the calling process catches to the
// container (SIGCHLD, SIGPIPE and SIGURG excepted; with a terminal, SIGWINCH
// resizes it instead) and, with Spec.Tty and a terminal on Stdin, puts
// that terminal in raw mode for the run. Programs that want to handle
// signals themselves use Start, then Process.Signal, Process.Resize and
// Process.Wait.
//
// The binary must dispatch the hidden verb InitVerb ("__init") to Init:
// the strata command does so in cmd/strata/init.go, a test binary in its
// TestMain.
//
// # Design: one re-exec, init as PID 1, the command as its child
//
// Go cannot fork without exec (the child of a bare fork would have one
// thread of a multi-threaded runtime), so every step inside the new
// namespaces happens in a freshly executed program. Start re-executes the
// running binary, /proc/self/exe, as "strata __init", with clone flags
// CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC (|CLONE_NEWNET), in a
// new session (so the caller's terminal sends it no job-control signals and
// does not stop it for reading), with Pdeathsig SIGKILL (if the runner dies,
// the container dies with it). That process is PID 1 of the new PID
// namespace: the init.
//
//	runner (host namespaces)          init, PID 1 (new namespaces)
//	  write config (fd 3, JSON) ───►   read config
//	                                   build the root (below)
//	  read reply (fd 4) ◄──────────   reply: error, or ready (+ pty master)
//	  copy the pty, forward signals    fork+exec the command as its child
//	  wait for the init ◄───────────  reap, forward signals; exit with
//	                                   the command's code
//
// The command is PID 1's child, not PID 1: "sh -c 'echo $$ $PPID'" prints a
// small number (not fixed: the init's Go runtime threads take thread ids in
// the same namespace) and 1. That way the command need not know how to be
// PID 1: the init reaps orphans that the kernel re-parents to it, and
// forwards every signal it catches (all but SIGCHLD and the Go runtime's
// SIGURG) to the command, which would otherwise ignore signals it has no
// handler for, as the kernel does for PID 1. When the command exits, the
// init exits with the command's code (128+N for signal N); the kernel then
// kills every process left in the PID namespace and has them all gone before
// the runner's wait for the init returns. SIGKILL to the init (Process.Signal)
// thus ends the whole container.
//
// Everything that depends on the image or the host is resolved by the
// runner before the re-exec: the user (from the view's /etc/passwd and
// /etc/group, opened with openat2 RESOLVE_IN_ROOT so an image's symlink can
// never make the runner read a host file), the environment defaults, and the
// generated /etc files. The init does no lookups of its own before
// pivot_root.
//
// # Inside the init
//
// In this order, all in the container's own mount namespace, so that none
// of it is ever visible on the host and all of it goes away with the last
// process:
//
//  1. Mount propagation of "/" is made private, recursively, so nothing
//     mounted or unmounted here reaches the host (or comes back from it).
//  2. Each bind source (generated /etc files, volumes) is cloned into a
//     detached mount with open_tree(OPEN_TREE_CLONE|AT_RECURSIVE) while the
//     host paths are still reachable; a read-only volume is made read-only
//     with mount_setattr(MOUNT_ATTR_RDONLY, AT_RECURSIVE) on the clone,
//     submounts included.
//  3. The view is bind-mounted onto itself (pivot_root needs a mount
//     point), becomes "/" with pivot_root(".", "."), and the old root,
//     now stacked on top, is detached with umount2(MNT_DETACH). No chroot:
//     nothing of the host is left in the namespace to escape to.
//  4. /proc (this PID namespace's), /dev as a tmpfs holding null, zero,
//     full, random, urandom and tty (mknod, mode 0666), the links ptmx ->
//     pts/ptmx, fd, stdin, stdout, stderr; /dev/pts (devpts newinstance,
//     ptmxmode=0666, mode=0620, gid=5), /dev/shm (tmpfs 1777), /dev/mqueue
//     (this IPC namespace's), and /sys read-only (sysfs shows the network
//     namespace of whoever mounts it, so --network none sees only lo).
//     A missing mount point directory is created in the view.
//  5. The detached trees are attached with move_mount at their targets,
//     now resolved inside the container (MOVE_MOUNT_T_SYMLINKS follows an
//     image's symlink within the container's root, never to the host).
//  6. The hostname is set (unless Spec.Hostname is empty, which keeps the
//     host's name the UTS namespace started with); with --network none,
//     lo is brought up.
//  7. The working directory is created if missing; with Spec.ReadOnly the
//     root mount alone is made read-only (mount_setattr, so its other flags
//     stay), leaving /dev, /proc, the /etc files and rw volumes writable.
//  8. With Spec.Tty, a terminal is opened in the container's own devpts
//     (so the command sees /dev/pts/0), chowned to the user and sized; its
//     master goes to the runner over fd 4 (SCM_RIGHTS). The command gets
//     the slave as stdin, stdout and stderr, a new session and the
//     terminal as its controlling terminal, so Ctrl-C (sent as a byte by
//     the raw host terminal) and job control work inside.
//  9. The command is looked up in the container's PATH (execvp's rules)
//     and started with fork+exec as the user, with its groups, in the
//     working directory.
//
// # /etc/hosts, /etc/hostname, /etc/resolv.conf
//
// The runner writes them into Spec.StateDir: hosts with localhost and the
// container's hostname on 127.0.1.1, hostname, and resolv.conf (the host's
// for --network host, one without name servers for --network none). They are
// bind-mounted over the view's files, so they are never written to the
// view's writable layer and never part of a commit. strata's init layer has
// empty placeholders for all three. If the view has no such file (a view
// not made by strata, like a bare debootstrap tree without /etc/hosts), the
// init creates an empty placeholder in the view (so the writable layer gets
// one empty file) and mounts over it; if it cannot (a read-only view, a
// dangling symlink, no /etc) it skips that file and the container runs
// without it. Volume mount points that do not exist are likewise created in
// the view as empty directories or files; the volumes' content never is.
//
// # Deadlocks with the FUSE server
//
// The view is served by a FUSE daemon, and go-fuse's fs/api.go ("Deadlocks")
// lists how a process deadlocks when it accesses a FUSE mount that it serves
// itself: a fork/exec child that chdirs or dup3s onto the mount while the
// parent waits for it, an exec of a binary on the mount, epoll or mmap on
// its files. The rule that keeps the runner out of all of these:
//
//   - The FUSE server is never in the process tree of a container and never
//     in its namespaces. "strata mount" serves the view from its own daemon,
//     started on the host before the run; the runner and the init only ever
//     access the view as ordinary clients. Never call Start or Run from the
//     process that serves the view (a test that serves a view in-process
//     must run the container from a separate process).
//   - The process that waits on the container never blocks the server: the
//     runner waits for the init and copies the terminal, and the server waits
//     on nobody. Nothing in the container can signal or kill the server,
//     which is in another PID namespace.
//   - The view is unmounted only after Wait: the container's mount namespace
//     holds a copy of the FUSE mount until its last process is gone, and the
//     kernel frees it with the namespace; the runner mounts nothing on the
//     host, so nothing of a run is left mounted there.
//   - If the server dies, the container's accesses fail with ENOTCONN; if it
//     hangs, requests wait killably, so SIGKILL to the init still ends the
//     container.
//
// # Limits
//
// No capability dropping, seccomp, cgroups, user namespaces, masked /proc
// paths, /dev/console or cgroupfs; no network other than the host's or none.
// A Stdin that is not an *os.File is copied by a goroutine that may outlive
// Wait if the reader never returns.
package runner
