package runner

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// kernelMount is one filesystem the kernel provides, mounted in the
// container after pivot_root.
type kernelMount struct {
	fstype, target string
	flags          uintptr
	data           string
}

const noSuidDevExec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC

// The /proc of the container's PID namespace, /dev as a small tmpfs (device
// nodes allowed, so no MS_NODEV), its own terminal instance, shared memory
// and POSIX message queues of the container's IPC namespace, and a
// read-only /sys (showing the container's network namespace's interfaces).
var kernelMounts = []kernelMount{
	{"proc", "/proc", noSuidDevExec, ""},
	{"tmpfs", "/dev", unix.MS_NOSUID | unix.MS_STRICTATIME, "mode=755,size=65536k"},
	{"devpts", "/dev/pts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"},
	{"tmpfs", "/dev/shm", noSuidDevExec, "mode=1777,size=65536k"},
	{"mqueue", "/dev/mqueue", noSuidDevExec, ""},
	{"sysfs", "/sys", noSuidDevExec | unix.MS_RDONLY, ""},
}

// deviceNode is a character device created in the container's /dev.
type deviceNode struct {
	name         string
	major, minor uint32
}

var deviceNodes = []deviceNode{
	{"null", 1, 3},
	{"zero", 1, 5},
	{"full", 1, 7},
	{"random", 1, 8},
	{"urandom", 1, 9},
	{"tty", 5, 0},
}

// deviceLinks are the symlinks every /dev has.
var deviceLinks = map[string]string{
	"/dev/ptmx":   "pts/ptmx",
	"/dev/fd":     "/proc/self/fd",
	"/dev/stdin":  "/proc/self/fd/0",
	"/dev/stdout": "/proc/self/fd/1",
	"/dev/stderr": "/proc/self/fd/2",
}

// mountKernelFilesystems mounts everything in kernelMounts, then fills /dev
// once its tmpfs is there. A missing mount point directory is created in
// the view (a directory in its writable layer).
func mountKernelFilesystems() error {
	for _, m := range kernelMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			return fmt.Errorf("creating %s: %w", m.target, err)
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.fstype, m.target, err)
		}
		if m.target == "/dev" {
			if err := populateDev(); err != nil {
				return err
			}
		}
	}
	return nil
}

// populateDev creates the device nodes, with mode 0666 whatever the umask,
// and the links.
func populateDev() error {
	for _, d := range deviceNodes {
		name := "/dev/" + d.name
		if err := unix.Mknod(name, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			return fmt.Errorf("creating %s: %w", name, err)
		}
		if err := unix.Chmod(name, 0o666); err != nil {
			return fmt.Errorf("creating %s: %w", name, err)
		}
	}
	for link, target := range deviceLinks {
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("creating %s: %w", link, err)
		}
	}
	return nil
}
