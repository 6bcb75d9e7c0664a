package integration

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// dirent is one record of getdents64.
type dirent struct {
	name string
	ino  uint64
	off  int64 // the telldir cookie of the NEXT entry
	typ  uint8
}

// readDirents reads entries from the directory descriptor fd with a
// getdents buffer of bufSize bytes, stopping at the end or after one
// buffer if oneBatch is set.
func readDirents(fd, bufSize int, oneBatch bool) ([]dirent, error) {
	buf := make([]byte, bufSize)
	var out []dirent
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return out, err
		}
		if n <= 0 {
			return out, nil
		}
		out = append(out, parseDirents(buf[:n])...)
		if oneBatch {
			return out, nil
		}
	}
}

// parseDirents decodes linux_dirent64 records.
func parseDirents(b []byte) []dirent {
	var out []dirent
	for len(b) >= 19 {
		reclen := int(binary.NativeEndian.Uint16(b[16:18]))
		if reclen < 19 || reclen > len(b) {
			break
		}
		name := b[19:reclen]
		if i := strings.IndexByte(string(name), 0); i >= 0 {
			name = name[:i]
		}
		out = append(out, dirent{
			ino:  binary.NativeEndian.Uint64(b[0:8]),
			off:  int64(binary.NativeEndian.Uint64(b[8:16])),
			typ:  b[18],
			name: string(name),
		})
		b = b[reclen:]
	}
	return out
}

func direntTypeLetter(t uint8) string {
	switch t {
	case unix.DT_REG:
		return "f"
	case unix.DT_DIR:
		return "d"
	case unix.DT_LNK:
		return "l"
	case unix.DT_FIFO:
		return "p"
	case unix.DT_CHR:
		return "c"
	case unix.DT_BLK:
		return "b"
	case unix.DT_SOCK:
		return "s"
	}
	return "?"
}

func modeDirentType(m uint32) uint8 {
	switch m & unix.S_IFMT {
	case unix.S_IFREG:
		return unix.DT_REG
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFIFO:
		return unix.DT_FIFO
	case unix.S_IFCHR:
		return unix.DT_CHR
	case unix.S_IFBLK:
		return unix.DT_BLK
	case unix.S_IFSOCK:
		return unix.DT_SOCK
	}
	return unix.DT_UNKNOWN
}

func openDir(root int, p string) (int, error) {
	return openAt(root, p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
}

// doReaddir lists a directory with a small getdents buffer (many calls),
// then checks that seeking back to each telldir cookie replays the rest of
// the listing and that each name appears once. (d_ino == st_ino and d_type
// are checked for every entry by the tree walk.)
func doReaddir(root int, o op) (string, error) {
	fd, err := openDir(root, o.Path)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	ents, err := readDirents(fd, 64, false)
	if err != nil {
		return "", err
	}
	checks := []string{
		"dups=" + listOrOK(duplicateNames(ents)),
		"seek=" + listOrOK(checkSeekReplay(fd, ents)),
	}
	return "entries=" + listingString(ents) + " " + strings.Join(checks, " "), nil
}

func listingString(ents []dirent) string {
	var names []string
	for _, e := range ents {
		names = append(names, e.name+":"+direntTypeLetter(e.typ))
	}
	sort.Strings(names)
	return "[" + strings.Join(names, " ") + "]"
}

func listOrOK(problems []string) string {
	if len(problems) == 0 {
		return "ok"
	}
	return "[" + strings.Join(problems, " ") + "]"
}

func duplicateNames(ents []dirent) []string {
	seen := map[string]bool{}
	var dups []string
	for _, e := range ents {
		if seen[e.name] {
			dups = append(dups, e.name)
		}
		seen[e.name] = true
	}
	return dups
}

// checkSeekReplay seeks to the cookie after entry k, for a few k, and
// checks the listing continues with entry k+1.
func checkSeekReplay(fd int, ents []dirent) []string {
	var problems []string
	for _, k := range []int{0, len(ents) / 2, len(ents) - 2} {
		if k < 0 || k >= len(ents)-1 {
			continue
		}
		if _, err := unix.Seek(fd, ents[k].off, unix.SEEK_SET); err != nil {
			problems = append(problems, fmt.Sprintf("seek@%d:%s", k, errString(err)))
			continue
		}
		rest, err := readDirents(fd, 64, false)
		if err != nil {
			problems = append(problems, fmt.Sprintf("read@%d:%s", k, errString(err)))
			continue
		}
		if want, got := namesOf(ents[k+1:]), namesOf(rest); want != got {
			problems = append(problems, fmt.Sprintf("after-%s:want(%s)got(%s)", ents[k].name, want, got))
		}
	}
	if _, err := unix.Seek(fd, 0, unix.SEEK_SET); err != nil {
		return append(problems, "rewind:"+errString(err))
	}
	again, err := readDirents(fd, 4096, false)
	if err != nil || namesOf(again) != namesOf(ents) {
		problems = append(problems, "rewind-differs")
	}
	return problems
}

func namesOf(ents []dirent) string {
	var names []string
	for _, e := range ents {
		names = append(names, e.name)
	}
	return strings.Join(names, ",")
}

// doReaddirChanging reads one getdents batch of Path, creates Path2 and
// removes Name in that directory, and reads on. POSIX leaves open whether
// the new and removed names show; every other name must show exactly once.
func doReaddirChanging(root int, o op) (string, error) {
	before, err := listNames(root, o.Path)
	if err != nil {
		return "", err
	}
	fd, err := openDir(root, o.Path)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	first, err := readDirents(fd, 64, true)
	if err != nil {
		return "", err
	}
	dirPrefix := ""
	if o.Path != "" {
		dirPrefix = o.Path + "/"
	}
	var steps []string
	cfd, err := openAt(root, dirPrefix+o.Path2, unix.O_CREAT|unix.O_WRONLY, 0o644)
	if err == nil {
		unix.Close(cfd)
	}
	steps = append(steps, "create="+orOK(errString(err)))
	err = unix.Unlinkat(root, dirPrefix+o.Name, 0)
	steps = append(steps, "unlink="+orOK(errString(err)))
	rest, err := readDirents(fd, 64, false)
	if err != nil {
		return strings.Join(steps, " "), err
	}
	all := append(first, rest...)
	seen := map[string]int{}
	for _, e := range all {
		seen[e.name]++
	}
	var problems []string
	for _, name := range before {
		if name != o.Name && seen[name] != 1 {
			problems = append(problems, fmt.Sprintf("%s×%d", name, seen[name]))
		}
	}
	problems = append(problems, duplicateNames(all)...)
	steps = append(steps, "stable-names="+listOrOK(problems))
	return strings.Join(steps, " "), nil
}

// listNames lists a directory (with . and ..) in one go.
func listNames(root int, p string) ([]string, error) {
	fd, err := openDir(root, p)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	ents, err := readDirents(fd, 32<<10, false)
	var names []string
	for _, e := range ents {
		names = append(names, e.name)
	}
	return names, err
}
