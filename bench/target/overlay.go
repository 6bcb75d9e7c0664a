package target

import (
	"bytes"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// mountOverlay mounts kernel overlayfs through the new mount API, adding one
// lower layer per fsconfig call ("lowerdir+", Linux 6.8+). Without Upper the
// mount is read-only.
func mountOverlay(spec Spec) (*Mount, error) {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	set := func(key, value string) error {
		if err := unix.FsconfigSetString(fsfd, key, value); err != nil {
			return fmt.Errorf("fsconfig %s=%s: %w%s", key, value, err, kernelMessages(fsfd))
		}
		return nil
	}
	for _, l := range spec.Lowers {
		if err := set("lowerdir+", l); err != nil {
			return nil, err
		}
	}
	if spec.Upper != "" {
		if err := set("upperdir", spec.Upper); err != nil {
			return nil, err
		}
		if err := set("workdir", spec.Work); err != nil {
			return nil, err
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("fsconfig create: %w%s", err, kernelMessages(fsfd))
	}
	attrs := 0
	if spec.Upper == "" {
		attrs = unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return nil, fmt.Errorf("fsmount: %w%s", err, kernelMessages(fsfd))
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, spec.Dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return nil, fmt.Errorf("move_mount to %s: %w", spec.Dir, err)
	}
	dir := spec.Dir
	return &Mount{unmount: func() error { return unmountDir(dir) }}, nil
}

// kernelMessages reads the error messages the kernel queued on an fs
// context, formatted to follow an error.
func kernelMessages(fsfd int) string {
	var msgs []string
	buf := make([]byte, 1024)
	for {
		n, err := unix.Read(fsfd, buf)
		if err != nil || n <= 0 {
			break
		}
		msgs = append(msgs, string(bytes.TrimSpace(buf[:n])))
	}
	if len(msgs) == 0 {
		return ""
	}
	return " (" + strings.Join(msgs, "; ") + ")"
}

// unmountDir unmounts dir, retrying while it is busy (a process that just
// exited may still hold it for a moment) and detaching it as a last resort
// so a run never leaves a mount behind.
func unmountDir(dir string) error {
	var err error
	for range 50 {
		err = unix.Unmount(dir, 0)
		if err == nil || err == unix.EINVAL || err == unix.ENOENT {
			return nil // EINVAL: not a mountpoint (any more)
		}
		if err != unix.EBUSY {
			break
		}
		sleep(100)
	}
	if derr := unix.Unmount(dir, unix.MNT_DETACH); derr != nil && derr != unix.EINVAL {
		return fmt.Errorf("unmount %s: %w; detach: %w", dir, err, derr)
	}
	fmt.Fprintf(os.Stderr, "warning: %s was busy (%v); detached it\n", dir, err)
	return nil
}
