package fs

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/whiteout"
)

// rename moves name in n to newName in np. Caller holds u.treeMu
// exclusively, so no other operation resolves a path meanwhile.
//
// Both objects are copied up first (a directory as metadata only: its lower
// content stays where it is). The backing rename then happens in the upper
// layer, with RENAME_WHITEOUT when a lower entry of the old name would
// otherwise show through. A moved directory with lower content records
// where that content lives in overlay's redirect xattr; a moved directory
// without any becomes opaque when a lower entry of the new name exists.
func (n *node) rename(ctx context.Context, name string, np *node, newName string, flags uint32) error {
	src, err := n.lookupChild(name)
	if err != nil {
		return err
	}
	dst, err := np.lookupChild(newName)
	dstExists := err == nil
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	if err := checkRename(src, dst, dstExists, flags); err != nil {
		return err
	}
	if dstExists && src.node == dst.node {
		return nil // two names of one inode: rename(2) does nothing
	}
	// Both parents first: the name being moved may be a hard link whose
	// node was copied up through another name in another directory, and
	// linking this name up needs its own directory in the upper layer.
	if err := np.copyUpLocked(false); err != nil {
		return err
	}
	if err := n.copyUpLocked(false); err != nil {
		return err
	}
	if err := src.node.copyUpLocked(false); err != nil {
		return err
	}
	if err := src.node.linkUpName(n, name); err != nil {
		return err
	}
	if flags&unix.RENAME_EXCHANGE != 0 {
		if err := dst.node.copyUpLocked(false); err != nil {
			return err
		}
		if err := dst.node.linkUpName(np, newName); err != nil {
			return err
		}
	}
	if dstExists && flags&unix.RENAME_EXCHANGE == 0 && !dst.isDir {
		// A hard-linked lower file loses a name as unlink would take it:
		// into the index first, so its other names count one link less.
		if dst.ci, err = np.indexBeforeUnlink(newName, dst.ci); err != nil {
			return err
		}
	}
	srcWhiteout, err := n.hasLowerName(name)
	if err != nil {
		return err
	}
	dstLower, err := np.hasLowerName(newName)
	if err != nil {
		return err
	}
	sdir, err := n.openUpperDir()
	if err != nil {
		return err
	}
	defer unix.Close(sdir)
	ddir, err := np.openUpperDir()
	if err != nil {
		return err
	}
	defer unix.Close(ddir)

	if flags&unix.RENAME_EXCHANGE != 0 {
		dstWhiteout := srcWhiteout
		srcWhiteout = dstLower
		if err := src.node.prepareMove(sdir, name, dstLower); err != nil {
			return err
		}
		if err := dst.node.prepareMove(ddir, newName, dstWhiteout); err != nil {
			return err
		}
		if err := unix.Renameat2(sdir, name, ddir, newName, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("exchange: %w", err)
		}
		src.node.moved(n, name, np, newName)
		dst.node.moved(np, newName, n, name)
		return nil
	}
	if err := src.node.prepareMove(sdir, name, dstLower); err != nil {
		return err
	}
	if dstExists {
		if err := np.clearDirForReplace(ddir, newName, dst); err != nil {
			return err
		}
	}
	if err := n.renameBacking(sdir, name, ddir, newName, srcWhiteout && n.u.wfmt != whiteout.FormatOCI); err != nil {
		return err
	}
	if srcWhiteout && n.u.wfmt == whiteout.FormatOCI {
		if err := whiteout.Create(sdir, name, whiteout.FormatOCI); err != nil {
			return err
		}
	}
	if dstExists {
		dst.node.dropName(np, newName)
		if removesObject(dst.ci) {
			dst.node.mu.Lock()
			dst.node.retireIdleBackingLocked(&dst.ci.st)
			dst.node.mu.Unlock()
			n.u.objectRemoved(dst.node.ino, dst.node, &dst.ci.st)
		}
		if dst.ci.index && !dst.ci.inUpper {
			if err := dst.node.dropLowerName(); err != nil {
				return err
			}
		}
	}
	src.node.moved(n, name, np, newName)
	return nil
}

// renameBacking moves sdir/name to ddir/newName in the upper layer, leaving
// a whiteout behind when leaveWhiteout is set. The view has been checked
// already, so what stands at the target in the upper layer is nothing, an
// entry being replaced, or a whiteout. A whiteout target is exchanged with
// the source (a directory cannot replace a device node); the whiteout then
// sits at the old name, where it is kept if one is needed and removed if not.
func (n *node) renameBacking(sdir int, name string, ddir int, newName string, leaveWhiteout bool) error {
	var st unix.Stat_t
	err := unix.Fstatat(ddir, newName, &st, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil && whiteout.IsWhiteout(ddir, newName, &st) {
		if err := unix.Renameat2(sdir, name, ddir, newName, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("rename over whiteout: %w", err)
		}
		if !leaveWhiteout {
			if err := unix.Unlinkat(sdir, name, 0); err != nil {
				return fmt.Errorf("drop whiteout: %w", err)
			}
		}
		return nil
	}
	var rflags uint
	if leaveWhiteout {
		rflags = unix.RENAME_WHITEOUT
	}
	if err := unix.Renameat2(sdir, name, ddir, newName, rflags); err != nil {
		return fmt.Errorf("rename: %w", err)
	}
	return nil
}

// found is a looked-up child with its node.
type found struct {
	node  *node
	isDir bool
	// ci is what the lookup learnt about the name: whether replacing it
	// removes its upper object (removesObject), or takes one of an
	// indexed node's names still only in a lower layer (index.go).
	ci *childInfo
}

// lookupChild finds name and its node. Caller holds u.treeMu.
func (n *node) lookupChild(name string) (*found, error) {
	ci, err := n.lookupName(name)
	if err != nil {
		return nil, err
	}
	c := n.newChild(name, ci, false)
	return &found{node: c, isDir: c.kind == unix.S_IFDIR, ci: ci}, nil
}

// checkRename applies rename(2)'s rules on types, emptiness and flags.
func checkRename(src, dst *found, dstExists bool, flags uint32) error {
	if flags&unix.RENAME_EXCHANGE != 0 {
		if !dstExists {
			return unix.ENOENT
		}
		return nil
	}
	if !dstExists {
		return nil
	}
	if flags&unix.RENAME_NOREPLACE != 0 {
		return unix.EEXIST
	}
	if src.node == dst.node {
		return nil
	}
	switch {
	case src.isDir && !dst.isDir:
		return unix.ENOTDIR
	case !src.isDir && dst.isDir:
		return unix.EISDIR
	case dst.isDir:
		empty, err := dst.node.isEmpty()
		if err != nil {
			return err
		}
		if !empty {
			return unix.ENOTEMPTY
		}
	}
	return nil
}

// hasLowerName reports whether a lower entry name shows below n.
func (n *node) hasLowerName(name string) (bool, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lowerHasNameLocked(name)
}

// lowerHasNameLocked is hasLowerName; caller holds n.mu.
func (n *node) lowerHasNameLocked(name string) (bool, error) {
	if n.opaque() {
		return false, nil
	}
	ll, err := n.lowerLookupLocked()
	if err != nil {
		return false, err
	}
	e, err := ll.find(n.u, name)
	return e != nil, err
}

// prepareMove records, on a directory about to move, where its lower
// content lives (redirect), or makes it opaque when it has none and the new
// place has a lower entry of the same name.
func (n *node) prepareMove(dirfd int, name string, newPlaceHasLower bool) error {
	if n.kind != unix.S_IFDIR {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.dir.upperOpaque && !n.dir.lowerDirs.empty() {
		redirect := "/" + n.dir.lowerDirs.rel
		if err := setxattrAt(dirfd, name, n.u.overlayNS+"redirect", []byte(redirect), 0); err != nil {
			return fmt.Errorf("set redirect: %w", err)
		}
		return nil
	}
	if newPlaceHasLower && !n.dir.upperOpaque {
		if err := n.u.markOpaque(dirfd, name); err != nil {
			return fmt.Errorf("set opaque: %w", err)
		}
		n.dir.upperOpaque = true
	}
	return nil
}

// clearDirForReplace empties an upper directory that is about to be
// replaced: it looks empty in the view but may still hold whiteouts.
func (n *node) clearDirForReplace(dirfd int, name string, dst *found) error {
	if !dst.isDir {
		return nil
	}
	dst.node.mu.Lock()
	inUpper := dst.node.inUpper
	dst.node.mu.Unlock()
	if !inUpper {
		return nil
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var names []string
	if err := readDirents(fd, func(nm string, _ uint64, _ uint8) error {
		names = append(names, nm)
		return nil
	}); err != nil {
		return err
	}
	for _, nm := range names {
		if err := removeAllAt(fd, nm); err != nil {
			return err
		}
	}
	return nil
}

// moved updates the node's name after a rename. Caller holds u.treeMu
// exclusively.
//
// A directory that changes parent has a new "..": the kernel drops the
// cached listings of the two parents on its own, but not the moved
// directory's, which holds ".." with the old parent's inode number. Its
// cache is dropped once the rename has been answered (a notification sent
// while the kernel holds the rename's locks could wait on them).
func (n *node) moved(oldParent *node, oldName string, parent *node, name string) {
	n.renameName(oldParent, oldName, parent, name)
	if n.kind == unix.S_IFDIR && oldParent != parent {
		n.u.notifyContent(n)
	}
}
