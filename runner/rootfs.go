package runner

import (
	"fmt"
	"os"
	"path"

	"golang.org/x/sys/unix"
)

// setupContainer turns the init's fresh namespaces into the container: the
// steps in the package doc's "Inside the init", in that order.
func setupContainer(cfg *initConfig) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mount propagation private: %w", err)
	}
	// Bind sources are host paths: take them now, as detached mount
	// trees, before the host's root goes away.
	etcTrees, err := detachTrees(cfg.EtcFiles)
	if err != nil {
		return err
	}
	defer closeTrees(etcTrees)
	volumeTrees, err := detachTrees(cfg.Volumes)
	if err != nil {
		return err
	}
	defer closeTrees(volumeTrees)

	if err := pivotInto(cfg.Rootfs); err != nil {
		return err
	}
	if err := mountKernelFilesystems(); err != nil {
		return err
	}
	if err := attachTrees(cfg.EtcFiles, etcTrees); err != nil {
		return err
	}
	if err := attachTrees(cfg.Volumes, volumeTrees); err != nil {
		return err
	}
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("setting the hostname: %w", err)
		}
	}
	if cfg.NetworkNone {
		if err := bringUpLoopback(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(cfg.WorkingDir, 0o755); err != nil {
		return fmt.Errorf("creating the working directory: %w", err)
	}
	if cfg.ReadOnly {
		// mount_setattr changes only the read-only bit of the root mount,
		// leaving its other flags (nosuid, nodev from the FUSE mount) and
		// the mounts on top of it as they are.
		attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(unix.AT_FDCWD, "/", 0, attr); err != nil {
			return fmt.Errorf("making the root read-only: %w", err)
		}
	}
	return nil
}

// pivotInto makes rootfs the root of this mount namespace and detaches the
// host's root from it entirely, so nothing of the host stays reachable (as
// it would after a chroot). pivot_root needs the new root to be a mount
// point, hence the bind onto itself; pivot_root(".", ".") stacks the old
// root on top of the new one, where a lazy unmount removes it.
func pivotInto(rootfs string) error {
	if err := unix.Mount(rootfs, rootfs, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding the root filesystem: %w", err)
	}
	if err := unix.Chdir(rootfs); err != nil {
		return fmt.Errorf("entering the root filesystem: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("entering the new root: %w", err)
	}
	return nil
}

// detachTrees clones each bind source into a detached mount (open_tree with
// OPEN_TREE_CLONE, submounts included) and applies read-only to the whole
// clone. The returned fds are attached after pivot_root, when the targets
// are resolved inside the container, so a symlink in the image can never
// point a mount at a host path.
func detachTrees(mounts []bindMount) ([]int, error) {
	var fds []int
	for _, m := range mounts {
		fd, err := unix.OpenTree(unix.AT_FDCWD, m.Source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
		if err != nil {
			closeTrees(fds)
			return nil, fmt.Errorf("bind source %s: %w", m.Source, err)
		}
		fds = append(fds, fd)
		if m.ReadOnly {
			attr := &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
			if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, attr); err != nil {
				closeTrees(fds)
				return nil, fmt.Errorf("making %s read-only: %w", m.Source, err)
			}
		}
	}
	return fds, nil
}

func closeTrees(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// attachTrees mounts each detached tree on its target in the container,
// creating a missing target first.
func attachTrees(mounts []bindMount, fds []int) error {
	for i, m := range mounts {
		attach, err := prepareMountTarget(fds[i], m)
		if err != nil {
			return err
		}
		if !attach {
			continue
		}
		err = unix.MoveMount(fds[i], "", unix.AT_FDCWD, m.Target, unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_SYMLINKS)
		if err != nil {
			return fmt.Errorf("mounting %s on %s: %w", m.Source, m.Target, err)
		}
	}
	return nil
}

// prepareMountTarget makes sure the target exists, with the source's kind
// (directory or not). For an Optional mount it only creates a plain missing
// file in an existing directory, and reports false (skip the mount) when
// even that is impossible: a read-only view, a dangling symlink, no /etc.
// Whatever it creates lands in the view's writable layer, empty.
func prepareMountTarget(treeFd int, m bindMount) (attach bool, err error) {
	if _, err := os.Stat(m.Target); err == nil {
		return true, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(treeFd, &st); err != nil {
		return false, fmt.Errorf("bind source %s: %w", m.Source, err)
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	if m.Optional {
		return createOptionalFile(m.Target), nil
	}
	if err := createTarget(m.Target, isDir); err != nil {
		return false, fmt.Errorf("creating mount target %s: %w", m.Target, err)
	}
	return true, nil
}

// createOptionalFile creates an empty placeholder file, only if nothing
// (not even a dangling symlink) has the name and the directory exists.
func createOptionalFile(target string) bool {
	fd, err := unix.Open(target, unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

func createTarget(target string, isDir bool) error {
	if isDir {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(path.Dir(target), 0o755); err != nil {
		return err
	}
	fd, err := unix.Open(target, unix.O_CREAT|unix.O_NOFOLLOW|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// bringUpLoopback sets IFF_UP on "lo", the only interface of a new network
// namespace, which starts down.
func bringUpLoopback() error {
	sock, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	defer unix.Close(sock)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(sock, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	return nil
}
