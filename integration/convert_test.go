package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// Kernel overlayfs reads only its own markers: char device 0/0 whiteouts
// and trusted.overlay.opaque=y (xattr whiteouts only with opaque=x on the
// parent, and user.overlay.* only with the userxattr option). strata must
// read every format. So the oracle gets each layer converted to overlay's
// native forms, while the system under test gets the original:
//
//	.wh.NAME                         -> NAME as char device 0/0
//	.wh..wh..opq                     -> trusted.overlay.opaque=y on the directory
//	user.overlay.opaque=y            -> trusted.overlay.opaque=y
//	*.overlay.opaque=x               -> removed (its xattr whiteouts become 0/0)
//	file with *.overlay.whiteout     -> char device 0/0
//	any other user.overlay.* xattr   -> removed
//
// Everything else is copied with owner, mode, times, xattrs, hard links and
// holes.

// convertLayerToOverlay writes a converted copy of layer directory src to
// dst, which must not exist.
func convertLayerToOverlay(src, dst string) error {
	c := &converter{linked: map[uint64]string{}}
	if err := c.copyDir(src, dst, ""); err != nil {
		return fmt.Errorf("convert %s: %w", src, err)
	}
	return nil
}

// convertStackToOverlay converts every layer of lowers into dir/O0, O1...
func convertStackToOverlay(dir string, lowers []string) ([]string, error) {
	var out []string
	for i, l := range lowers {
		dst := filepath.Join(dir, fmt.Sprintf("O%d", i))
		if err := convertLayerToOverlay(l, dst); err != nil {
			return nil, err
		}
		out = append(out, dst)
	}
	return out, nil
}

type converter struct {
	// linked maps a source inode number to the first destination path
	// written for it, so later names become hard links.
	linked map[uint64]string
}

func (c *converter) copyDir(src, dst, rel string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	// The top directory may pre-exist as a mount point (a tmpfs layer).
	if err := unix.Mkdir(dst, 0o700); err != nil && !(rel == "" && errors.Is(err, unix.EEXIST)) {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	opaque := false
	for _, e := range entries {
		name := e.Name()
		if whiteout.IsOCIOpaque(name) {
			opaque = true
			continue
		}
		if target, ok := whiteout.OCITarget(name); ok {
			if err := unix.Mknod(filepath.Join(dst, target), unix.S_IFCHR, 0); err != nil && !errors.Is(err, unix.EEXIST) {
				return err
			}
			continue
		}
		if err := c.copyEntry(filepath.Join(src, name), filepath.Join(dst, name), filepath.Join(rel, name)); err != nil {
			return err
		}
	}
	// Owner and mode before xattrs: chown drops security.capability.
	if err := copyOwnerMode(dst, &st); err != nil {
		return err
	}
	if err := copyConvertedXattrs(src, dst, &opaque); err != nil {
		return err
	}
	if opaque {
		if err := unix.Lsetxattr(dst, whiteout.XattrTrustedPrefix+"opaque", []byte("y"), 0); err != nil {
			return err
		}
	}
	return copyTimes(dst, &st)
}

func (c *converter) copyEntry(src, dst, rel string) error {
	var st unix.Stat_t
	if err := unix.Lstat(src, &st); err != nil {
		return err
	}
	parentFd, err := unix.Open(filepath.Dir(src), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	isWhiteout := whiteout.IsWhiteout(parentFd, filepath.Base(src), &st)
	unix.Close(parentFd)
	if isWhiteout {
		err := unix.Mknod(dst, unix.S_IFCHR, 0)
		if errors.Is(err, unix.EEXIST) {
			return nil // an OCI whiteout for the same name came first
		}
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return c.copyDir(src, dst, rel)
	case unix.S_IFREG:
		if first, ok := c.linked[st.Ino]; ok && st.Nlink > 1 {
			return unix.Link(first, dst)
		}
		c.linked[st.Ino] = dst
		if err := copySparseFile(src, dst); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := unix.Symlink(target, dst); err != nil {
			return err
		}
	default: // fifo, socket, char and block devices
		if err := unix.Mknod(dst, st.Mode&unix.S_IFMT|0o600, int(st.Rdev)); err != nil {
			return err
		}
	}
	if err := copyOwnerMode(dst, &st); err != nil {
		return err
	}
	if err := copyConvertedXattrs(src, dst, nil); err != nil {
		return err
	}
	return copyTimes(dst, &st)
}

// copyConvertedXattrs copies src's xattrs to dst, converting or dropping
// overlay markers. For a directory (opaque != nil) it sets *opaque when src
// is marked opaque in any xattr format.
func copyConvertedXattrs(src, dst string, opaque *bool) error {
	names, err := listXattrs(src)
	if err != nil {
		return err
	}
	for _, name := range names {
		value, err := lgetxattrBytes(src, name)
		if err != nil {
			return err
		}
		if strings.HasSuffix(name, ".overlay.opaque") && whiteout.IsPrivateXattr(name) {
			if opaque != nil && string(value) == "y" {
				*opaque = true
			}
			continue
		}
		if strings.HasPrefix(name, whiteout.XattrUserPrefix) || name == whiteout.XattrTrustedPrefix+"whiteout" {
			continue
		}
		if err := unix.Lsetxattr(dst, name, value, 0); err != nil {
			return fmt.Errorf("setxattr %s on %s: %w", name, dst, err)
		}
	}
	return nil
}

// copyOwnerMode sets owner, then mode (chown clears set-id bits).
func copyOwnerMode(dst string, st *unix.Stat_t) error {
	if err := unix.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Chmod(dst, st.Mode&0o7777); err != nil {
			return err
		}
	}
	return nil
}

// copyTimes sets atime and mtime last, after everything that changes them.
func copyTimes(dst string, st *unix.Stat_t) error {
	ts := []unix.Timespec{st.Atim, st.Mtim}
	return unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// copySparseFile copies the data extents of src into a new file dst of the
// same size, leaving holes as holes.
func copySparseFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	if err := out.Truncate(info.Size()); err != nil {
		return err
	}
	exts, err := dataExtents(int(in.Fd()), info.Size())
	if err != nil {
		return err
	}
	for _, x := range exts {
		if _, err := in.Seek(x.start, io.SeekStart); err != nil {
			return err
		}
		if _, err := out.Seek(x.start, io.SeekStart); err != nil {
			return err
		}
		if _, err := io.CopyN(out, in, x.end-x.start); err != nil {
			return err
		}
	}
	return nil
}

type extent struct{ start, end int64 }

func (x extent) String() string { return fmt.Sprintf("[%d,%d)", x.start, x.end) }

// dataExtents lists the data ranges of the open file fd of the given size
// with SEEK_DATA/SEEK_HOLE.
func dataExtents(fd int, size int64) ([]extent, error) {
	var out []extent
	off := int64(0)
	for off < size {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			return nil, err
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		out = append(out, extent{start, end})
		off = end
	}
	return out, nil
}

// listXattrs returns the xattr names of p (not following a symlink).
func listXattrs(p string) ([]string, error) {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size == 0 {
		return nil, err
	}
	buf := make([]byte, size)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	return names, nil
}

func lgetxattrBytes(p, name string) ([]byte, error) {
	size, err := unix.Lgetxattr(p, name, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, size)
	n, err := unix.Lgetxattr(p, name, buf)
	if err != nil {
		return nil, err
	}
	return buf[:n], nil
}
