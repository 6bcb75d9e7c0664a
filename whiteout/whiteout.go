// Package whiteout reads and writes the ways a layer records that a name was
// deleted (a whiteout) or that a directory hides everything below it (an
// opaque directory).
//
// Formats read, in every layer:
//
//   - overlay whiteout: a character device with device number 0/0;
//   - overlay xattr whiteout: a zero-size regular file carrying the xattr
//     trusted.overlay.whiteout or user.overlay.whiteout (kernel 6.7+
//     "xwhiteout", usable where mknod is not);
//   - OCI whiteout: a file named ".wh.NAME" hides NAME;
//   - overlay opaque directory: the xattr trusted.overlay.opaque or
//     user.overlay.opaque with the value "y";
//   - OCI opaque directory: the directory holds an entry ".wh..wh..opq".
//
// Formats written: Create writes a 0/0 character device where the process may
// call mknod (root), and otherwise an OCI ".wh.NAME" file; SetOpaque writes
// trusted.overlay.opaque=y as root and user.overlay.opaque=y otherwise.
//
// Everything here works on directory file descriptors and names within them
// (never joined path strings), so a caller that holds a descriptor for a
// directory inside a layer root cannot be led outside it.
package whiteout

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// OCIPrefix starts the name of an OCI whiteout file.
	OCIPrefix = ".wh."
	// OCIOpaque is the OCI marker entry for an opaque directory.
	OCIOpaque = ".wh..wh..opq"

	// XattrTrustedPrefix and XattrUserPrefix are overlayfs's private
	// namespaces; nothing under them is ever shown to the user.
	XattrTrustedPrefix = "trusted.overlay."
	XattrUserPrefix    = "user.overlay."

	opaqueSuffix   = "opaque"
	whiteoutSuffix = "whiteout"
)

// Format selects how a whiteout or opaque marker is written.
type Format int

const (
	// FormatOverlay writes char device 0/0 and trusted.overlay.opaque=y, the
	// kernel overlayfs format. Needs CAP_MKNOD and CAP_SYS_ADMIN.
	FormatOverlay Format = iota
	// FormatUserXattr writes ".wh.NAME"-free user.overlay.* markers: a
	// zero-size file with user.overlay.whiteout, and user.overlay.opaque=y.
	FormatUserXattr
	// FormatOCI writes ".wh.NAME" files and ".wh..wh..opq" markers.
	FormatOCI
)

// DefaultFormat is the format a process with the given effective uid can
// write: overlay's own as root, OCI files otherwise.
func DefaultFormat(euid int) Format {
	if euid == 0 {
		return FormatOverlay
	}
	return FormatOCI
}

// OCITarget reports whether name is an OCI whiteout file and, if so, the
// name it hides. The opaque marker is not a whiteout of a name: it returns
// ok=false for it (see IsOCIOpaque).
func OCITarget(name string) (target string, ok bool) {
	if name == OCIOpaque || !strings.HasPrefix(name, OCIPrefix) {
		return "", false
	}
	target = name[len(OCIPrefix):]
	if !ValidName(target) {
		return "", false
	}
	return target, true
}

// IsOCIOpaque reports whether name is the OCI opaque-directory marker.
func IsOCIOpaque(name string) bool { return name == OCIOpaque }

// OCIName is the OCI whiteout file name that hides name.
func OCIName(name string) string { return OCIPrefix + name }

// ValidName reports whether name can be a single directory entry: not empty,
// not "." or "..", no slash and no NUL.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

// IsPrivateXattr reports whether an xattr name belongs to overlay's (and so
// strata's) bookkeeping and must never be shown to or set by the user.
func IsPrivateXattr(name string) bool {
	return strings.HasPrefix(name, XattrTrustedPrefix) || strings.HasPrefix(name, XattrUserPrefix)
}

// IsCharWhiteout reports whether a stat result is an overlay whiteout device.
func IsCharWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// IsWhiteout reports whether the entry name in directory dirfd, whose lstat
// result is st, records a deletion in any overlay format (char device 0/0 or
// a zero-size file with an overlay whiteout xattr). OCI ".wh." names are
// recognised by name with OCITarget, not here.
func IsWhiteout(dirfd int, name string, st *unix.Stat_t) bool {
	if IsCharWhiteout(st) {
		return true
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		return false
	}
	return hasXattrAt(dirfd, name, whiteoutSuffix)
}

// IsOpaque reports whether the directory open as fd carries an overlay
// opaque xattr ("y"). An OCI ".wh..wh..opq" entry is found by the caller
// while it lists the directory.
func IsOpaque(fd int) bool {
	for _, prefix := range []string{XattrTrustedPrefix, XattrUserPrefix} {
		v, err := getxattrFd(fd, prefix+opaqueSuffix)
		if err == nil && v == "y" {
			return true
		}
	}
	return false
}

// Create writes a whiteout for name in directory dirfd in the given format.
// It fails with EEXIST if name (or, for FormatOCI, ".wh.name") exists.
func Create(dirfd int, name string, f Format) error {
	if !ValidName(name) {
		return fmt.Errorf("whiteout %q: %w", name, unix.EINVAL)
	}
	switch f {
	case FormatOverlay:
		if err := unix.Mknodat(dirfd, name, unix.S_IFCHR|0, 0); err != nil {
			return fmt.Errorf("mknod whiteout %q: %w", name, err)
		}
		return nil
	case FormatUserXattr:
		fd, err := unix.Openat(dirfd, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("create whiteout %q: %w", name, err)
		}
		defer unix.Close(fd)
		if err := unix.Fsetxattr(fd, XattrUserPrefix+whiteoutSuffix, nil, 0); err != nil {
			unix.Unlinkat(dirfd, name, 0)
			return fmt.Errorf("mark whiteout %q: %w", name, err)
		}
		return nil
	case FormatOCI:
		fd, err := unix.Openat(dirfd, OCIName(name), unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("create whiteout %q: %w", OCIName(name), err)
		}
		return unix.Close(fd)
	}
	return fmt.Errorf("whiteout format %d: %w", f, unix.EINVAL)
}

// SetOpaque marks the directory open as fd opaque in the given format.
func SetOpaque(fd int, f Format) error {
	switch f {
	case FormatOverlay:
		return wrapXattr("set opaque", unix.Fsetxattr(fd, XattrTrustedPrefix+opaqueSuffix, []byte("y"), 0))
	case FormatUserXattr:
		return wrapXattr("set opaque", unix.Fsetxattr(fd, XattrUserPrefix+opaqueSuffix, []byte("y"), 0))
	case FormatOCI:
		mfd, err := unix.Openat(fd, OCIOpaque, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("create opaque marker: %w", err)
		}
		return unix.Close(mfd)
	}
	return fmt.Errorf("opaque format %d: %w", f, unix.EINVAL)
}

// ClearOpaque removes every opaque marker from the directory open as fd.
func ClearOpaque(fd int) error {
	for _, prefix := range []string{XattrTrustedPrefix, XattrUserPrefix} {
		err := unix.Fremovexattr(fd, prefix+opaqueSuffix)
		if err != nil && !errors.Is(err, unix.ENODATA) && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.ENOTSUP) {
			return fmt.Errorf("clear opaque: %w", err)
		}
	}
	err := unix.Unlinkat(fd, OCIOpaque, 0)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("clear opaque marker: %w", err)
	}
	return nil
}

func wrapXattr(what string, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// hasXattrAt reports whether dirfd/name (not followed if a symlink) has the
// overlay xattr suffix in either private namespace.
func hasXattrAt(dirfd int, name, suffix string) bool {
	// Only regular files reach here, so opening cannot block or follow.
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	for _, prefix := range []string{XattrTrustedPrefix, XattrUserPrefix} {
		if _, err := unix.Fgetxattr(fd, prefix+suffix, nil); err == nil {
			return true
		}
	}
	return false
}

func getxattrFd(fd int, attr string) (string, error) {
	var buf [16]byte
	n, err := unix.Fgetxattr(fd, attr, buf[:])
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}
