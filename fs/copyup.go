package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// Copy-up moves an object from a lower layer into the upper one so it can be
// changed. It is atomic: the copy is built under a temporary name in the work
// directory (same filesystem as the upper), with data, owner, mode, xattrs
// and times, fsynced unless the mount is volatile, and only then renamed
// into place with RENAME_NOREPLACE. A crash leaves the old view or the new
// one, never a short file; a temporary left behind is removed at the next
// mount. Parents are copied up first. The node's mu serialises copy-ups of
// one node; the state is checked again after taking it, so two writers of
// one lower file cause one copy-up.

// copyUp makes sure the node exists in the upper layer, with its data when
// withData is set (else a metadata-only copy for a regular file).
func (n *node) copyUp(ctx context.Context, withData bool) error {
	if n.u.upper == nil || n.u.cfg.ReadOnly {
		return unix.EROFS
	}
	n.mu.Lock()
	done := n.inUpper && !(withData && n.metacopy)
	n.mu.Unlock()
	if done {
		return nil
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	return n.copyUpLocked(withData)
}

// copyUpLocked is copyUp for a caller that holds u.treeMu shared.
func (n *node) copyUpLocked(withData bool) error {
	if n.parent != nil {
		if err := n.parent.copyUpLocked(false); err != nil {
			return err
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.inUpper {
		if withData && n.metacopy {
			return n.completeMetacopyLocked()
		}
		return nil
	}
	if n.parent == nil {
		return fmt.Errorf("copy up the root: %w", unix.EIO)
	}
	return n.copyUpObjectLocked(withData)
}

func (n *node) copyUpObjectLocked(withData bool) error {
	src := lowerRef{layer: n.lower.layer, rel: n.lowerRel()}
	l := n.u.lowers[src.layer]
	var st unix.Stat_t
	if err := n.statLower(&st); err != nil {
		return err
	}
	workfd, err := n.u.workDir()
	if err != nil {
		return fmt.Errorf("open work dir: %w", err)
	}
	defer unix.Close(workfd)
	tmp := n.u.tmpName()
	metacopy := false
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		err = unix.Mkdirat(workfd, tmp, 0o700)
	case unix.S_IFREG:
		metacopy = !withData && st.Size > 0
		err = n.copyFileData(l, src.rel, workfd, tmp, &st, !metacopy)
	case unix.S_IFLNK:
		err = copySymlink(l, src.rel, workfd, tmp)
	default:
		err = unix.Mknodat(workfd, tmp, st.Mode, int(st.Rdev))
	}
	if err != nil {
		unix.Unlinkat(workfd, tmp, 0)
		return fmt.Errorf("copy up %q: %w", src.rel, err)
	}
	if err := n.finishCopy(l, src.rel, workfd, tmp, &st, metacopy); err != nil {
		removeAllAt(workfd, tmp)
		return fmt.Errorf("copy up %q: %w", src.rel, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Nlink > 1 {
		err = n.publishIndexed(workfd, tmp, uint32(st.Nlink))
	} else {
		err = n.publish(workfd, tmp)
	}
	if err != nil {
		removeAllAt(workfd, tmp)
		return err
	}
	n.inUpper = true
	n.metacopy = metacopy
	if n.kind != unix.S_IFREG || !metacopy {
		// The copy no longer needs its lower data.
		n.hasLower = n.kind == unix.S_IFDIR && n.hasLower
	}
	return nil
}

// publish renames the finished temporary into the upper parent.
func (n *node) publish(workfd int, tmp string) error {
	dirfd, name, err := n.openUpperParent()
	if err != nil {
		return fmt.Errorf("open upper parent: %w", err)
	}
	defer unix.Close(dirfd)
	defer keepTimes(dirfd)()
	if err := unix.Renameat2(workfd, tmp, dirfd, name, unix.RENAME_NOREPLACE); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("publish copy-up of %q: %w", name, err)
		}
		// Only a whiteout may stand where a lower object is visible
		// (after a rename replaced it); replace it.
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || !whiteout.IsCharWhiteout(&st) {
			return fmt.Errorf("publish copy-up of %q: %w", name, err)
		}
		if err := unix.Renameat(workfd, tmp, dirfd, name); err != nil {
			return fmt.Errorf("publish copy-up of %q: %w", name, err)
		}
	}
	// The directory is not fsynced: the copy's data is, and a rename that
	// a crash loses leaves the old view, which is allowed. overlayfs makes
	// the same trade.
	return nil
}

// keepTimes records the times of the directory dirfd and returns a function
// that puts them back. A copy-up adds an entry to the upper parent, which
// the user did not change: overlayfs restores the parent's times too.
func keepTimes(dirfd int) func() {
	var st unix.Stat_t
	if unix.Fstat(dirfd, &st) != nil {
		return func() {}
	}
	return func() {
		unix.UtimesNanoAt(unix.AT_FDCWD, procFdPath(dirfd), []unix.Timespec{st.Atim, st.Mtim}, 0)
	}
}

// copyFileData creates workfd/tmp with the lower file's data (or, when
// withData is false, only its size, as a hole to be filled later).
func (n *node) copyFileData(l *layer, rel string, workfd int, tmp string, st *unix.Stat_t, withData bool) error {
	dst, err := unix.Openat(workfd, tmp, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(dst)
	if withData {
		srcfd, err := l.open(rel, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		err = copyData(dst, srcfd, st.Size)
		unix.Close(srcfd)
		if err != nil {
			return err
		}
	}
	if err := unix.Ftruncate(dst, st.Size); err != nil {
		return err
	}
	return n.u.fsync(dst)
}

// copyData copies size bytes from src to dst keeping holes: a reflink when
// the filesystem can, else copy_file_range over the data extents found with
// SEEK_DATA/SEEK_HOLE, else read and write.
func copyData(dst, src int, size int64) error {
	if size == 0 {
		return nil
	}
	if unix.IoctlFileClone(dst, src) == nil {
		return nil
	}
	return copyExtents(dst, src, size)
}

// copyExtents copies the data extents of src's first size bytes into dst
// at the same offsets, so holes stay holes.
func copyExtents(dst, src int, size int64) error {
	for off := int64(0); off < size; {
		start, err := unix.Seek(src, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			return copyRange(dst, src, off, size-off)
		}
		if start >= size {
			return nil
		}
		end, err := unix.Seek(src, start, unix.SEEK_HOLE)
		if err != nil || end > size {
			end = size
		}
		if err := copyRange(dst, src, start, end-start); err != nil {
			return err
		}
		off = end
	}
	return nil
}

func copyRange(dst, src int, off, length int64) error {
	for length > 0 {
		inOff, outOff := off, off
		chunk := length
		if chunk > 1<<30 {
			chunk = 1 << 30
		}
		n, err := unix.CopyFileRange(src, &inOff, dst, &outOff, int(chunk), 0)
		if err != nil || n == 0 {
			if err == nil || errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
				return copyRangeRW(dst, src, off, length)
			}
			return err
		}
		off += int64(n)
		length -= int64(n)
	}
	return nil
}

func copyRangeRW(dst, src int, off, length int64) error {
	buf := make([]byte, 1<<20)
	for length > 0 {
		want := int64(len(buf))
		if want > length {
			want = length
		}
		n, err := unix.Pread(src, buf[:want], off)
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrUnexpectedEOF
		}
		if _, err := unix.Pwrite(dst, buf[:n], off); err != nil {
			return err
		}
		off += int64(n)
		length -= int64(n)
	}
	return nil
}

func copySymlink(l *layer, rel string, workfd int, tmp string) error {
	dir, base := splitRel(rel)
	dirfd, err := l.openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	buf := make([]byte, unix.PathMax)
	sz, err := unix.Readlinkat(dirfd, base, buf)
	if err != nil {
		return err
	}
	return unix.Symlinkat(string(buf[:sz]), workfd, tmp)
}

// finishCopy gives the temporary the lower object's owner, mode, xattrs and
// times, and records its identity (and, for a metacopy, where its data is).
func (n *node) finishCopy(l *layer, rel string, workfd int, tmp string, st *unix.Stat_t, metacopy bool) error {
	if err := unix.Fchownat(workfd, tmp, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(workfd, tmp, st.Mode&0o7777, 0); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	if err := copyXattrs(l, rel, workfd, tmp); err != nil {
		return err
	}
	if err := setxattrAt(workfd, tmp, n.u.xattrPrefix+"ino", []byte(strconv.FormatUint(n.ino, 10)), 0); err != nil {
		return fmt.Errorf("record inode number: %w", err)
	}
	if metacopy {
		if err := setxattrAt(workfd, tmp, n.u.overlayNS+"metacopy", nil, 0); err != nil {
			return fmt.Errorf("mark metacopy: %w", err)
		}
		if err := setxattrAt(workfd, tmp, n.u.overlayNS+"redirect", []byte("/"+rel), 0); err != nil {
			return fmt.Errorf("record metacopy data: %w", err)
		}
	}
	ts := []unix.Timespec{st.Atim, st.Mtim}
	if err := unix.UtimesNanoAt(workfd, tmp, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("set times: %w", err)
	}
	return nil
}

// copyXattrs copies the user-visible xattrs of a lower object (overlay's and
// strata's private ones stay behind).
func copyXattrs(l *layer, rel string, workfd int, tmp string) error {
	dir, base := splitRel(rel)
	dirfd, err := l.openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	names, err := listXattrNames(dirfd, base)
	if err != nil {
		return err
	}
	for _, name := range names {
		if isPrivateXattr(name) {
			continue
		}
		val, err := getxattrAll(dirfd, base, name)
		if err != nil {
			continue
		}
		if err := setxattrAt(workfd, tmp, name, val, 0); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("copy xattr %s: %w", name, err)
		}
	}
	return nil
}

func isPrivateXattr(name string) bool { return whiteout.IsPrivateXattr(name) }

func listXattrNames(dirfd int, name string) ([]string, error) {
	sz, err := listxattrAt(dirfd, name, nil)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil
		}
		return nil, err
	}
	if sz == 0 {
		return nil, nil
	}
	buf := make([]byte, sz*2)
	sz, err = listxattrAt(dirfd, name, buf)
	if err != nil {
		return nil, err
	}
	var names []string
	start := 0
	for i := 0; i < sz; i++ {
		if buf[i] == 0 {
			if i > start {
				names = append(names, string(buf[start:i]))
			}
			start = i + 1
		}
	}
	return names, nil
}

func getxattrAll(dirfd int, name, attr string) ([]byte, error) {
	sz, err := getxattrAt(dirfd, name, attr, nil)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, sz)
	sz, err = getxattrAt(dirfd, name, attr, buf)
	if err != nil {
		return nil, err
	}
	return buf[:sz], nil
}

// completeMetacopyLocked fills a metacopy upper file with its lower data in
// place, then drops the metacopy mark. Until the mark is gone the data is
// still read from the lower file, so a crash in between loses nothing.
// Caller holds u.treeMu shared and n.mu.
func (n *node) completeMetacopyLocked() error {
	dirfd, name, err := n.openObject()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	dst, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open metacopy: %w", err)
	}
	defer unix.Close(dst)
	src, err := n.u.lowers[n.lower.layer].open(n.lowerRel(), unix.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open metacopy data: %w", err)
	}
	defer unix.Close(src)
	var st, ust unix.Stat_t
	if err := unix.Fstat(src, &st); err != nil {
		return err
	}
	if err := unix.Fstat(dst, &ust); err != nil {
		return err
	}
	size := st.Size
	if ust.Size < size {
		size = ust.Size // truncated since the metadata copy
	}
	// Extents, not a reflink: a clone would replace the whole file,
	// including a size the user set since the metadata copy.
	if err := copyExtents(dst, src, size); err != nil {
		return fmt.Errorf("copy metacopy data: %w", err)
	}
	if err := n.u.fsync(dst); err != nil {
		return err
	}
	// Copying data must not change the times the user sees.
	unix.UtimesNanoAt(dirfd, name, []unix.Timespec{ust.Atim, ust.Mtim}, unix.AT_SYMLINK_NOFOLLOW)
	if err := removexattrAt(dirfd, name, n.u.overlayNS+"metacopy"); err != nil {
		return fmt.Errorf("clear metacopy: %w", err)
	}
	removexattrAt(dirfd, name, n.u.overlayNS+"redirect")
	n.metacopy = false
	n.hasLower = false
	return nil
}
