package layerdb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	badger "github.com/dgraph-io/badger/v4"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// recover runs at every Open, under the store lock, and brings the
// directories back in line with the database (see "Crash safety" in the
// package doc):
//
//   - a tmp entry whose flock can be taken belongs to a dead command: removed,
//     unless the process named in it is alive (a live command creates its
//     entry and then locks it: between the two the lock is free);
//   - a layer or container directory with no record is the leftover of a
//     command that died between its rename and its commit, or between its
//     commit and its delete: moved to the trash.
//
// Every publish (rename into layers/ or containers/ plus the commit) happens
// while its command holds the store lock, so no live command can be between
// those two steps while recover runs.
func (s *Store) recover() error {
	if err := s.removeDeadTmp(); err != nil {
		return err
	}
	if err := s.trashOrphans(layersDirName, func(txn *badger.Txn, name string) (bool, error) {
		return exists(txn, layerKey(digest.NewDigestFromEncoded(digest.SHA256, name)))
	}); err != nil {
		return err
	}
	return s.trashOrphans(ctrsDirName, func(txn *badger.Txn, name string) (bool, error) {
		return exists(txn, containerKey(name))
	})
}

func (s *Store) removeDeadTmp() error {
	dir := filepath.Join(s.root, tmpDirName)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			// Not ours to interpret (e.g. a stray symlink): remove it.
			os.Remove(p)
			continue
		}
		if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil || tmpOwnerAlive(e.Name()) {
			unix.Close(fd) // a live command is working in it
			continue
		}
		err = removeTree(p)
		unix.Close(fd)
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) trashOrphans(sub string, known func(txn *badger.Txn, name string) (bool, error)) error {
	dir := filepath.Join(s.root, sub)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var orphans []string
	err = s.view(func(txn *badger.Txn) error {
		for _, e := range entries {
			ok, err := known(txn, e.Name())
			if err != nil {
				return err
			}
			if !ok {
				orphans = append(orphans, e.Name())
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, name := range orphans {
		if err := s.trash(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// tmpOwnerAlive tells whether the process whose id is in a tmp entry's
// name (KIND-PID-RANDOM, see newTmpDir) still runs. A name without one
// has no live owner. A reused process id only delays the removal to a
// later recovery.
func tmpOwnerAlive(name string) bool {
	parts := strings.Split(name, "-")
	if len(parts) < 3 {
		return false
	}
	pid, err := strconv.Atoi(parts[len(parts)-2])
	if err != nil || pid <= 0 {
		return false
	}
	err = unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
