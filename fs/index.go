package fs

import (
	"errors"
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// Hard links of lower files.
//
// Names that are hard links of one lower file are one node (they share the
// inode number). When one of them is copied up, the copy goes into the
// index, a directory in the work dir named by the inode number, and the name
// is hard-linked to it. Every other name of that file finds the index entry
// on lookup and uses it as its object, so a write through one name shows
// through all of them, also after a remount. A name is linked to the index
// entry only when it must exist in the upper layer itself (it is renamed);
// until then it stays a lower name, counted in the index entry's
// lower-names xattr so that st_nlink = (index links - 1) + lower names.
// overlayfs's index=on keeps the same promise with its own index format.

const indexDir = "strata-index"

func indexName(ino uint64) string { return strconv.FormatUint(ino, 10) }

// prepareIndex makes the index directory if it is missing.
func (u *union) prepareIndex(workfd int) error {
	err := unix.Mkdirat(workfd, indexDir, 0o700)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("make index dir: %w", err)
	}
	return nil
}

// checkIndex looks up the index entry for a regular file with more than one
// link and, when there is one, makes it the object of the lookup.
func (u *union) checkIndex(ci *childInfo) {
	if u.work == nil || ci.st.Mode&unix.S_IFMT != unix.S_IFREG || ci.st.Nlink <= 1 {
		return
	}
	fd, err := u.work.openDir(indexDir)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	name := indexName(ci.ino)
	var st unix.Stat_t
	if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
		return
	}
	if ci.inUpper && st.Ino != ci.st.Ino {
		return // an unrelated upper file
	}
	ci.index = true
	ci.st = st
	ci.lowerNames = readLowerNames(fd, name, u.xattrPrefix)
	if _, ok := getxattrString(fd, name, u.overlayNS+"metacopy"); ok && ci.hasLower {
		ci.metacopy = true
	}
}

func readLowerNames(dirfd int, name, prefix string) uint32 {
	v, ok := getxattrString(dirfd, name, prefix+"lower-names")
	if !ok {
		return 0
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

func (u *union) writeLowerNames(dirfd int, name string, count uint32) error {
	return setxattrAt(dirfd, name, u.xattrPrefix+"lower-names", []byte(strconv.FormatUint(uint64(count), 10)), 0)
}

// publishIndexed puts a finished copy of a hard-linked lower file into the
// index and links the node's name to it. Caller holds u.treeMu shared and
// n.mu.
func (n *node) publishIndexed(workfd int, tmp string, lowerNlink uint32) error {
	if err := n.u.prepareIndex(workfd); err != nil {
		return err
	}
	if err := n.u.writeLowerNames(workfd, tmp, lowerNlink-1); err != nil {
		return fmt.Errorf("record lower names: %w", err)
	}
	idx, err := n.u.work.openDir(indexDir)
	if err != nil {
		return err
	}
	defer unix.Close(idx)
	name := indexName(n.ino)
	if err := unix.Renameat2(workfd, tmp, idx, name, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("publish index entry: %w", err)
	}
	dirfd, entry, err := n.openUpperParent()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	defer keepTimes(dirfd)()
	if err := unix.Linkat(idx, name, dirfd, entry, 0); err != nil {
		return fmt.Errorf("link %q to its index entry: %w", entry, err)
	}
	n.index = true
	n.lowerNames = lowerNlink - 1
	return nil
}

// linkUpName makes sure the name parent/name of an indexed node exists in
// the upper layer, linked to the index entry. Caller holds u.treeMu.
func (n *node) linkUpName(parent *node, name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.index {
		return nil
	}
	dirfd, err := parent.openUpperDir()
	if err != nil {
		return err
	}
	defer unix.Close(dirfd)
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil {
		return nil
	}
	idx, err := n.u.work.openDir(indexDir)
	if err != nil {
		return err
	}
	defer unix.Close(idx)
	if err := unix.Linkat(idx, indexName(n.ino), dirfd, name, 0); err != nil {
		return fmt.Errorf("link %q up: %w", name, err)
	}
	return n.dropLowerNameLocked(idx)
}

// dropLowerName records that one lower-only name of an indexed node is gone
// (whited out or linked up). Caller holds n.mu.
func (n *node) dropLowerNameLocked(idx int) error {
	if n.lowerNames > 0 {
		n.lowerNames--
	}
	return n.u.writeLowerNames(idx, indexName(n.ino), n.lowerNames)
}

func (n *node) dropLowerName() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	idx, err := n.u.work.openDir(indexDir)
	if err != nil {
		return err
	}
	defer unix.Close(idx)
	return n.dropLowerNameLocked(idx)
}
