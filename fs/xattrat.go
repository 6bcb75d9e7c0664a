package fs

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// An empty name means dirfd itself, which may be an O_PATH descriptor that
// the *xattrat calls refuse; those go through /proc/self/fd.
//
// The *xattrat system calls (Linux 6.13) read and change extended attributes
// of dirfd/name without following a symlink and without opening the file,
// which matters for symlinks, fifos and device nodes in a layer. Older
// kernels get a fallback through an O_PATH descriptor and its /proc path.

type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

var haveXattrAt = true

func getxattrAt(dirfd int, name, attr string, dest []byte) (int, error) {
	if haveXattrAt && name != "" {
		n, err := xattrAtCall(unix.SYS_GETXATTRAT, dirfd, name, attr, dest, 0)
		if !errors.Is(err, unix.ENOSYS) {
			return n, err
		}
		haveXattrAt = false
	}
	return viaProc(dirfd, name, func(p string) (int, error) { return unix.Getxattr(p, attr, dest) })
}

func setxattrAt(dirfd int, name, attr string, value []byte, flags int) error {
	if haveXattrAt && name != "" {
		_, err := xattrAtCall(unix.SYS_SETXATTRAT, dirfd, name, attr, value, uint32(flags))
		if !errors.Is(err, unix.ENOSYS) {
			return err
		}
		haveXattrAt = false
	}
	_, err := viaProc(dirfd, name, func(p string) (int, error) { return 0, unix.Setxattr(p, attr, value, flags) })
	return err
}

func removexattrAt(dirfd int, name, attr string) error {
	if haveXattrAt && name != "" {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return err
		}
		a, err := unix.BytePtrFromString(attr)
		if err != nil {
			return err
		}
		_, _, e := unix.Syscall6(unix.SYS_REMOVEXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			uintptr(unix.AT_SYMLINK_NOFOLLOW|emptyPathFlag(name)), uintptr(unsafe.Pointer(a)), 0, 0)
		if e != unix.ENOSYS {
			return errnoErr(e)
		}
		haveXattrAt = false
	}
	_, err := viaProc(dirfd, name, func(p string) (int, error) { return 0, unix.Removexattr(p, attr) })
	return err
}

func listxattrAt(dirfd int, name string, dest []byte) (int, error) {
	if haveXattrAt && name != "" {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return 0, err
		}
		var buf unsafe.Pointer
		if len(dest) > 0 {
			buf = unsafe.Pointer(&dest[0])
		}
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
			uintptr(unix.AT_SYMLINK_NOFOLLOW|emptyPathFlag(name)), uintptr(buf), uintptr(len(dest)), 0)
		if e != unix.ENOSYS {
			return int(r), errnoErr(e)
		}
		haveXattrAt = false
	}
	return viaProc(dirfd, name, func(p string) (int, error) { return unix.Listxattr(p, dest) })
}

func emptyPathFlag(name string) int {
	if name == "" {
		return unix.AT_EMPTY_PATH
	}
	return 0
}

func xattrAtCall(nr uintptr, dirfd int, name, attr string, buf []byte, flags uint32) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := xattrArgs{size: uint32(len(buf)), flags: flags}
	if len(buf) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&buf[0])))
	}
	r, _, e := unix.Syscall6(nr, uintptr(dirfd), uintptr(unsafe.Pointer(p)),
		uintptr(unix.AT_SYMLINK_NOFOLLOW|emptyPathFlag(name)), uintptr(unsafe.Pointer(a)),
		uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
	return int(r), errnoErr(e)
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// viaProc runs an xattr call on dirfd/name through an O_PATH descriptor, so
// a symlink is never followed.
func viaProc(dirfd int, name string, call func(path string) (int, error)) (int, error) {
	if name == "" {
		return call(procFdPath(dirfd))
	}
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	return call(procFdPath(fd))
}

// getxattrString reads a small xattr value; ok is false when it is absent.
func getxattrString(dirfd int, name, attr string) (string, bool) {
	var buf [256]byte
	n, err := getxattrAt(dirfd, name, attr, buf[:])
	if errors.Is(err, unix.ERANGE) {
		big := make([]byte, 64<<10)
		n, err = getxattrAt(dirfd, name, attr, big)
		if err != nil {
			return "", false
		}
		return string(big[:n]), true
	}
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}
