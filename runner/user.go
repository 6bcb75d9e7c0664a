package runner

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// credential is who the command runs as.
type credential struct {
	UID, GID uint32
	// Groups are the supplementary groups: GID and every group in
	// /etc/group that lists the user by name.
	Groups []uint32
	// Home is the user's home directory, the default for $HOME.
	Home string
}

// passwdEntry is one line of /etc/passwd.
type passwdEntry struct {
	Name     string
	UID, GID uint32
	Home     string
}

// groupEntry is one line of /etc/group.
type groupEntry struct {
	Name    string
	GID     uint32
	Members []string
}

// resolveUser turns the -u value into a credential using the image's own
// /etc/passwd and /etc/group (read inside rootfs, never the host's).
//
// A name that is not in the files is an error. A numeric uid that is not in
// /etc/passwd is accepted (with gid 0 and home "/") because images often
// run as an arbitrary uid; the same holds for a numeric gid.
func resolveUser(rootfs, spec string) (credential, error) {
	users, err := readPasswd(rootfs)
	if err != nil {
		return credential{}, err
	}
	groups, err := readGroup(rootfs)
	if err != nil {
		return credential{}, err
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" {
		if hasGroup {
			return credential{}, fmt.Errorf("user %q: empty user name", spec)
		}
		userPart = "0"
	}
	entry, err := findUser(users, userPart)
	if err != nil {
		return credential{}, err
	}
	cred := credential{UID: entry.UID, GID: entry.GID, Home: entry.Home}
	if hasGroup {
		g, err := findGroup(groups, groupPart)
		if err != nil {
			return credential{}, err
		}
		cred.GID = g.GID
	}
	cred.Groups = supplementaryGroups(groups, entry.Name, cred.GID)
	return cred, nil
}

// findUser finds a user by name or number. An unknown number gets a
// synthetic entry; an unknown name is an error.
func findUser(users []passwdEntry, nameOrID string) (passwdEntry, error) {
	id, numErr := strconv.ParseUint(nameOrID, 10, 32)
	for _, u := range users {
		if u.Name == nameOrID || (numErr == nil && u.UID == uint32(id)) {
			return u, nil
		}
	}
	if numErr == nil {
		home := "/"
		if id == 0 {
			home = "/root"
		}
		return passwdEntry{UID: uint32(id), Home: home}, nil
	}
	return passwdEntry{}, fmt.Errorf("unknown user %q: not in the image's /etc/passwd", nameOrID)
}

// findGroup finds a group by name or number; an unknown number is accepted.
func findGroup(groups []groupEntry, nameOrID string) (groupEntry, error) {
	id, numErr := strconv.ParseUint(nameOrID, 10, 32)
	for _, g := range groups {
		if g.Name == nameOrID || (numErr == nil && g.GID == uint32(id)) {
			return g, nil
		}
	}
	if numErr == nil {
		return groupEntry{GID: uint32(id)}, nil
	}
	return groupEntry{}, fmt.Errorf("unknown group %q: not in the image's /etc/group", nameOrID)
}

// supplementaryGroups is what initgroups(3) gives: the gid the command runs
// with, and every group naming the user as a member, without duplicates. A
// user known only by number has no name to be a member with.
func supplementaryGroups(groups []groupEntry, userName string, gid uint32) []uint32 {
	list := []uint32{gid}
	seen := map[uint32]bool{gid: true}
	if userName == "" {
		return list
	}
	for _, g := range groups {
		for _, m := range g.Members {
			if m == userName && !seen[g.GID] {
				seen[g.GID] = true
				list = append(list, g.GID)
			}
		}
	}
	return list
}

func readPasswd(rootfs string) ([]passwdEntry, error) {
	var users []passwdEntry
	err := readColonFile(rootfs, "/etc/passwd", func(fields []string) {
		if len(fields) < 7 {
			return
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			return
		}
		users = append(users, passwdEntry{Name: fields[0], UID: uint32(uid), GID: uint32(gid), Home: fields[5]})
	})
	return users, err
}

func readGroup(rootfs string) ([]groupEntry, error) {
	var groups []groupEntry
	err := readColonFile(rootfs, "/etc/group", func(fields []string) {
		if len(fields) < 4 {
			return
		}
		gid, err := strconv.ParseUint(fields[2], 10, 32)
		if err != nil {
			return
		}
		var members []string
		if fields[3] != "" {
			members = strings.Split(fields[3], ",")
		}
		groups = append(groups, groupEntry{Name: fields[0], GID: uint32(gid), Members: members})
	})
	return groups, err
}

// readColonFile calls line for each non-comment line of a colon-separated
// file inside rootfs. A missing file reads as empty: an image without
// /etc/passwd can still run as a numeric uid.
func readColonFile(rootfs, name string, line func(fields []string)) error {
	f, err := openInRoot(rootfs, name)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the image's %s: %w", name, err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(io.LimitReader(f, 16<<20))
	for scanner.Scan() {
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		line(strings.Split(text, ":"))
	}
	if err := scanner.Err(); err != nil {
		return fmt.Errorf("reading the image's %s: %w", name, err)
	}
	return nil
}

// openInRoot opens name as if rootfs were "/": symlinks in the image,
// absolute ones included, resolve inside rootfs and ".." stops at it, so an
// image cannot make the runner read a host file.
func openInRoot(rootfs, name string) (*os.File, error) {
	root, err := unix.Open(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", rootfs, err)
	}
	defer unix.Close(root)
	fd, err := unix.Openat2(root, name, &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return nil, fmt.Errorf("open %s in %s: %w", name, rootfs, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}
