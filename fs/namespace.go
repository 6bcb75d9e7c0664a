package fs

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// slot describes the place a new entry goes: the upper directory and what
// stands at the name now.
type slot struct {
	dirfd        int
	name         string
	overWhiteout bool // a whiteout must be replaced (atomically, via the work dir)
	lowerHasName bool // a lower entry of this name is hidden below
}

// prepareSlot copies this directory up and checks that name is free in the
// view. Caller holds u.treeMu shared; the caller closes s.dirfd.
func (n *node) prepareSlot(name string) (*slot, error) {
	if len(name) > 255 {
		return nil, unix.ENAMETOOLONG
	}
	if n.u.upper == nil || n.u.cfg.ReadOnly {
		return nil, unix.EROFS
	}
	if err := n.copyUpLocked(false); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	lowerHasName, err := n.lowerHasNameLocked(name)
	if err != nil {
		return nil, err
	}
	dirfd, err := n.openUpperDir()
	if err != nil {
		return nil, fmt.Errorf("open upper dir: %w", err)
	}
	s := &slot{dirfd: dirfd, name: name, lowerHasName: lowerHasName}
	var st unix.Stat_t
	err = unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case err == nil && whiteout.IsWhiteout(dirfd, name, &st):
		s.overWhiteout = true
	case err == nil:
		unix.Close(dirfd)
		return nil, unix.EEXIST
	case !errors.Is(err, unix.ENOENT):
		unix.Close(dirfd)
		return nil, fmt.Errorf("stat upper %q: %w", name, err)
	case s.lowerHasName && !(n.u.wfmt == whiteout.FormatOCI && n.hasOCIWhiteout(dirfd, name)):
		unix.Close(dirfd)
		return nil, unix.EEXIST
	}
	return s, nil
}

// owner is who a new entry belongs to: the caller, with the group of a
// setgid parent directory.
func (s *slot) owner(ctx context.Context) (uid, gid int) {
	uid, gid = 0, 0
	if c, ok := ctx.(*fuse.Context); ok {
		uid, gid = int(c.Caller.Uid), int(c.Caller.Gid)
	}
	var st unix.Stat_t
	if unix.Fstat(s.dirfd, &st) == nil && st.Mode&unix.S_ISGID != 0 {
		gid = -1 // the filesystem already gave it the directory's group
	}
	return uid, gid
}

// makeEntry creates the entry with make(dirfd, name). Over a whiteout the
// entry is made in the work directory, given its owner (and, for a
// directory, the opaque mark) and renamed over the whiteout in one step.
func (n *node) makeEntry(ctx context.Context, s *slot, isDir bool, make func(dirfd int, name string) error) error {
	uid, gid := s.owner(ctx)
	if !s.overWhiteout {
		if err := make(s.dirfd, s.name); err != nil {
			return err
		}
		if err := unix.Fchownat(s.dirfd, s.name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			removeAllAt(s.dirfd, s.name)
			return fmt.Errorf("chown new entry: %w", err)
		}
		return nil
	}
	workfd, err := n.u.workDir()
	if err != nil {
		return err
	}
	defer unix.Close(workfd)
	tmp := n.u.tmpName()
	if err := make(workfd, tmp); err != nil {
		return err
	}
	if gid == -1 {
		var st unix.Stat_t
		if unix.Fstat(s.dirfd, &st) == nil {
			gid = int(st.Gid)
		}
	}
	err = unix.Fchownat(workfd, tmp, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && isDir {
		err = n.u.markOpaque(workfd, tmp)
	}
	if err == nil {
		err = replaceWhiteout(workfd, tmp, s.dirfd, s.name)
	}
	if err != nil {
		removeAllAt(workfd, tmp)
		return fmt.Errorf("replace whiteout %q: %w", s.name, err)
	}
	return nil
}

// replaceWhiteout puts workfd/tmp where the whiteout dirfd/name is, in one
// step: the two are exchanged (a directory cannot be renamed over a device
// node), then the whiteout, now in the work dir, is removed.
func replaceWhiteout(workfd int, tmp string, dirfd int, name string) error {
	if err := unix.Renameat2(workfd, tmp, dirfd, name, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	return unix.Unlinkat(workfd, tmp, 0)
}

// markOpaque marks dirfd/name opaque in the mount's format.
func (u *union) markOpaque(dirfd int, name string) error {
	if u.wfmt == whiteout.FormatOCI {
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return whiteout.SetOpaque(fd, whiteout.FormatOCI)
	}
	return setxattrAt(dirfd, name, u.overlayNS+"opaque", []byte("y"), 0)
}

// newUpperChild makes the node for an entry just created in the upper
// directory. Caller holds u.treeMu shared.
func (n *node) newUpperChild(ctx context.Context, s *slot, out *fuse.EntryOut, isDir bool) (*node, error) {
	ci := &childInfo{inUpper: true}
	if err := unix.Fstatat(s.dirfd, s.name, &ci.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, fmt.Errorf("stat new entry: %w", err)
	}
	return n.newUpperChildStat(ctx, s, out, isDir, ci), nil
}

// newUpperChildStat is newUpperChild for a caller that has the stat.
func (n *node) newUpperChildStat(ctx context.Context, s *slot, out *fuse.EntryOut, isDir bool, ci *childInfo) *node {
	ci.ino = n.u.upper.foldIno(ci.st.Ino)
	ci.opaque = isDir && s.overWhiteout
	child := n.newChild(s.name, ci, true)
	child.fillEntry(&ci.st, out)
	child.learnXattrNames(s.dirfd, s.name)
	return child
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*node, *file, syscall.Errno) {
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	s, err := n.prepareSlot(name)
	if err != nil {
		return nil, nil, toErrno(err)
	}
	defer unix.Close(s.dirfd)
	openFlags := int(flags)&openFlagsKept | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd := -1
	err = n.makeEntry(ctx, s, false, func(dirfd int, nm string) error {
		var e error
		fd, e = unix.Openat(dirfd, nm, openFlags|unix.O_CREAT|unix.O_EXCL, mode&0o7777)
		return e
	})
	if err != nil {
		return nil, nil, toErrno(err)
	}
	ci := &childInfo{inUpper: true}
	if err := unix.Fstat(fd, &ci.st); err != nil {
		unix.Close(fd)
		return nil, nil, toErrno(err)
	}
	child := n.newUpperChildStat(ctx, s, out, false, ci)
	// A new file has no capability; only set-id bits in its mode matter.
	f := &file{n: child, fd: fd, upper: true, writable: int(flags)&writeAccess != 0}
	if errno := child.handOut(f, mode&(unix.S_ISUID|unix.S_ISGID) != 0); errno != 0 {
		// The kernel gets no entry: give back the reference.
		n.u.unref(child)
		return nil, nil, errno
	}
	return child, f, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*node, syscall.Errno) {
	return n.mkEntry(ctx, name, true, out, func(dirfd int, nm string) error {
		return unix.Mkdirat(dirfd, nm, mode&0o7777)
	})
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*node, syscall.Errno) {
	return n.mkEntry(ctx, name, false, out, func(dirfd int, nm string) error {
		return unix.Mknodat(dirfd, nm, mode, int(dev))
	})
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*node, syscall.Errno) {
	return n.mkEntry(ctx, name, false, out, func(dirfd int, nm string) error {
		return unix.Symlinkat(target, dirfd, nm)
	})
}

func (n *node) mkEntry(ctx context.Context, name string, isDir bool, out *fuse.EntryOut, make func(int, string) error) (*node, syscall.Errno) {
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	s, err := n.prepareSlot(name)
	if err != nil {
		return nil, toErrno(err)
	}
	defer unix.Close(s.dirfd)
	if err := n.makeEntry(ctx, s, isDir, make); err != nil {
		return nil, toErrno(err)
	}
	child, err := n.newUpperChild(ctx, s, out, isDir)
	if err != nil {
		return nil, toErrno(err)
	}
	return child, 0
}

// Link makes a new name for target; target is copied up with its data.
func (n *node) Link(ctx context.Context, target *node, name string, out *fuse.EntryOut) (*node, syscall.Errno) {
	t := target.current()
	if err := t.copyUp(ctx, true); err != nil {
		return nil, toErrno(err)
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	s, err := n.prepareSlot(name)
	if err != nil {
		return nil, toErrno(err)
	}
	defer unix.Close(s.dirfd)
	t.mu.Lock()
	tdir, tname, err := t.openObject()
	t.mu.Unlock()
	if err != nil {
		return nil, toErrno(err)
	}
	defer unix.Close(tdir)
	err = n.linkInto(s, tdir, tname)
	if err != nil {
		return nil, toErrno(err)
	}
	var st unix.Stat_t
	if err := unix.Fstatat(s.dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return nil, toErrno(err)
	}
	t.fillEntry(&st, out)
	t.mu.Lock()
	if t.parent == nil && t.anonFd >= 0 {
		t.parent, t.name = n, name
		unix.Close(int(t.anonFd))
		t.anonFd = -1
	} else if t.parent != nil {
		n.u.addAlias(t, n, name)
	} else {
		t.parent, t.name = n, name
	}
	t.mu.Unlock()
	return t, 0
}

// Tmpfile makes an O_TMPFILE file in the upper directory. It has no name
// until linkat gives it one (Link).
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*node, *file, syscall.Errno) {
	if n.u.upper == nil || n.u.cfg.ReadOnly {
		return nil, nil, syscall.EROFS
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	if err := n.copyUpLocked(false); err != nil {
		return nil, nil, toErrno(err)
	}
	n.mu.Lock()
	dirfd, err := n.openUpperDir()
	n.mu.Unlock()
	if err != nil {
		return nil, nil, toErrno(err)
	}
	defer unix.Close(dirfd)
	openFlags := int(flags)&openFlagsKept&^unix.O_TRUNC | unix.O_TMPFILE | unix.O_CLOEXEC
	fd, err := unix.Openat(dirfd, ".", openFlags, mode&0o7777)
	if err != nil {
		return nil, nil, toErrno(err)
	}
	s := &slot{dirfd: dirfd}
	uid, gid := s.owner(ctx)
	var st unix.Stat_t
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err == nil {
		err = unix.Fstat(fd, &st)
	}
	if err != nil {
		unix.Close(fd)
		return nil, nil, toErrno(err)
	}
	anon, err := unix.Dup(fd)
	if err != nil {
		unix.Close(fd)
		return nil, nil, toErrno(err)
	}
	child := &node{u: n.u, kind: unix.S_IFREG, ino: n.u.upper.foldIno(st.Ino), inUpper: true, anonFd: int32(anon)}
	n.u.nodesMu.Lock()
	n.u.nodes[child.ino] = child
	n.u.refLocked(child)
	n.u.nodesMu.Unlock()
	child.fillEntry(&st, out)
	f := &file{n: child, fd: fd, upper: true}
	if errno := child.handOut(f, mode&(unix.S_ISUID|unix.S_ISGID) != 0); errno != 0 {
		n.u.unref(child)
		return nil, nil, errno
	}
	return child, f, 0
}

func (n *node) linkInto(s *slot, tdir int, tname string) error {
	flags := 0
	if tname == "" {
		// An O_TMPFILE file: link it through its /proc name.
		tdir, tname, flags = unix.AT_FDCWD, procFdPath(tdir), unix.AT_SYMLINK_FOLLOW
	}
	if !s.overWhiteout {
		return unix.Linkat(tdir, tname, s.dirfd, s.name, flags)
	}
	workfd, err := n.u.workDir()
	if err != nil {
		return err
	}
	defer unix.Close(workfd)
	tmp := n.u.tmpName()
	if err := unix.Linkat(tdir, tname, workfd, tmp, flags); err != nil {
		return err
	}
	if err := replaceWhiteout(workfd, tmp, s.dirfd, s.name); err != nil {
		unix.Unlinkat(workfd, tmp, 0)
		return err
	}
	return nil
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return toErrno(n.remove(ctx, name, false))
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return toErrno(n.remove(ctx, name, true))
}

// remove deletes name from the view: the upper entry goes, and a whiteout
// stays where a lower entry of that name would show through.
func (n *node) remove(ctx context.Context, name string, dir bool) error {
	if n.u.upper == nil || n.u.cfg.ReadOnly {
		return unix.EROFS
	}
	n.u.treeMu.RLock()
	defer n.u.treeMu.RUnlock()
	ci, err := n.lookupName(name)
	if err != nil {
		return err
	}
	isDir := ci.st.Mode&unix.S_IFMT == unix.S_IFDIR
	if dir && !isDir {
		return unix.ENOTDIR
	}
	if !dir && isDir {
		return unix.EISDIR
	}
	if isDir {
		child := n.newChild(name, ci, false)
		empty, err := child.isEmpty()
		if err != nil {
			return err
		}
		if !empty {
			return unix.ENOTEMPTY
		}
	}
	if err := n.copyUpLocked(false); err != nil {
		return err
	}
	if ci, err = n.indexBeforeUnlink(name, ci); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	needWhiteout, err := n.lowerHasNameLocked(name)
	if err != nil {
		return err
	}
	if err := n.removeFromUpper(name, ci.inUpper, isDir, needWhiteout); err != nil {
		return err
	}
	if ci.index && !ci.inUpper {
		if child := n.nodeFor(ci.ino); child != nil {
			child.dropLowerName()
		}
	}
	gone := n.nodeFor(ci.ino)
	if gone != nil && gone.kind == ci.st.Mode&unix.S_IFMT {
		// Other requests read gone.parent under gone.mu and treeMu
		// held shared, as here.
		gone.mu.Lock()
		gone.dropName(n, name)
		if removesObject(ci) {
			gone.retireIdleBackingLocked(&ci.st)
		}
		gone.mu.Unlock()
	} else {
		gone = nil
	}
	if removesObject(ci) {
		n.u.objectRemoved(ci.ino, gone, &ci.st)
	}
	return nil
}

// removesObject reports whether taking the name away removes the upper
// object ci describes: a directory, or a file with no other name. (An
// index entry lives on in the work dir; a lower object stays below its
// whiteout.)
func removesObject(ci *childInfo) bool {
	if !ci.inUpper || ci.index {
		return false
	}
	return ci.st.Mode&unix.S_IFMT == unix.S_IFDIR || ci.st.Nlink <= 1
}

// indexBeforeUnlink copies a hard-linked lower file into the index (its
// metadata only) before one of its names goes, so the names that stay
// report the right st_nlink; overlayfs with index=on does the same. It
// returns the name's state after that. Caller holds u.treeMu shared.
func (n *node) indexBeforeUnlink(name string, ci *childInfo) (*childInfo, error) {
	if ci.st.Mode&unix.S_IFMT != unix.S_IFREG || ci.st.Nlink <= 1 || ci.index || ci.inUpper {
		return ci, nil
	}
	child := n.newChild(name, ci, false)
	if err := child.copyUpLocked(false); err != nil {
		return nil, err
	}
	return n.lookupName(name)
}

// removeFromUpper is removeUpper in the node's own upper directory. The
// common case, a file with nothing below it, is one unlink through the
// cached descriptor.
func (n *node) removeFromUpper(name string, inUpper, isDir, needWhiteout bool) error {
	if inUpper && !isDir && !needWhiteout {
		var err error
		if n.dirFd().with(func(dirfd int) { err = unix.Unlinkat(dirfd, name, 0) }) {
			return err
		}
	}
	dirfd, err := n.openUpperDir()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	return n.removeUpper(dirfd, name, inUpper, isDir, needWhiteout)
}

// removeUpper removes dirfd/name from the upper layer and leaves a whiteout
// if needed; both in one atomic step where an upper entry exists.
func (n *node) removeUpper(dirfd int, name string, inUpper, isDir, needWhiteout bool) error {
	if !inUpper {
		if err := whiteout.Create(dirfd, name, n.u.wfmt); err != nil {
			return err
		}
		return nil
	}
	if !isDir && !needWhiteout {
		return unix.Unlinkat(dirfd, name, 0)
	}
	if isDir && !needWhiteout {
		if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err == nil {
			return nil
		}
	}
	workfd, err := n.u.workDir()
	if err != nil {
		return err
	}
	defer unix.Close(workfd)
	tmp := n.u.tmpName()
	flags := uint(0)
	if needWhiteout {
		flags = unix.RENAME_WHITEOUT
		if n.u.wfmt == whiteout.FormatOCI {
			flags = 0
		}
	}
	if err := unix.Renameat2(dirfd, name, workfd, tmp, flags); err != nil {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	if needWhiteout && n.u.wfmt == whiteout.FormatOCI {
		if err := whiteout.Create(dirfd, name, whiteout.FormatOCI); err != nil {
			return err
		}
	}
	return removeAllAt(workfd, tmp)
}

// isEmpty reports whether the directory shows no entries in the view.
// Caller holds u.treeMu shared.
func (n *node) isEmpty() (bool, error) {
	ents, err := n.mergedEntries(false)
	if err != nil {
		return false, err
	}
	return len(ents) == 0, nil
}

func (n *node) Rename(ctx context.Context, name string, np *node, newName string, flags uint32) syscall.Errno {
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		// overlayfs refuses RENAME_WHITEOUT and unknown flags alike.
		return syscall.EINVAL
	}
	if len(newName) > 255 {
		return syscall.ENAMETOOLONG
	}
	if n.u.upper == nil || n.u.cfg.ReadOnly {
		return syscall.EROFS
	}
	n.u.treeMu.Lock()
	defer n.u.treeMu.Unlock()
	return toErrno(n.rename(ctx, name, np, newName, flags))
}
