package fs

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/strata-fs/strata/fuseloop"
)

// MountSpec is a parsed "-o" option string: the layers, the durability
// choice and the FUSE and mount(2) options, plus what was not understood.
type MountSpec struct {
	Lowers   []string
	Upper    string
	Work     string
	Volatile bool
	ReadOnly bool
	// ProbeDirSize is Config.ProbeDirSize (probe_size=BYTES|off).
	ProbeDirSize int64
	Mount        MountOptions
	Unknown      []string // reported to the user and skipped
	setOther     bool
	setPerms     bool
}

// passThroughOptions go to mount(2) as they are.
var passThroughOptions = map[string]bool{
	"nodev": true, "dev": true, "nosuid": true, "suid": true, "noexec": true, "exec": true,
	"noatime": true, "atime": true, "nodiratime": true, "diratime": true, "relatime": true,
	"strictatime": true, "sync": true, "async": true, "dirsync": true, "lazytime": true,
}

// ignoredOptions are understood and need nothing: fstab and mount-helper
// words, and overlayfs features strata always has.
var ignoredOptions = map[string]bool{
	"defaults": true, "auto": true, "noauto": true, "user": true, "nouser": true, "users": true,
	"nofail": true, "_netdev": true, "rw": true, "redirect_dir": true, "metacopy": true,
	"index": true, "xino": true, "nfs_export": true, "userxattr": true, "uuid": true,
	"fsync": true, "subtype": true,
}

// ParseMountOptions parses comma-separated options the way overlayfs and
// fuse-overlayfs spell them. A comma or colon inside a path is escaped with a
// backslash. Later options override earlier ones.
func ParseMountOptions(s string, spec *MountSpec) error {
	for _, opt := range splitEscaped(s, ',') {
		if opt == "" {
			continue
		}
		key, val, hasVal := strings.Cut(opt, "=")
		switch key {
		case "lowerdir":
			spec.Lowers = nil
			for _, l := range splitEscaped(val, ':') {
				if l == "" {
					return fmt.Errorf("option %q: empty layer path", opt)
				}
				spec.Lowers = append(spec.Lowers, unescape(l))
			}
		case "lowerdir+":
			spec.Lowers = append(spec.Lowers, unescape(val))
		case "upperdir":
			spec.Upper = unescape(val)
		case "workdir":
			spec.Work = unescape(val)
		case "ro":
			spec.ReadOnly = true
		case "volatile":
			spec.Volatile = true
		case "fsync":
			spec.Volatile = val == "0"
		case "probe_size":
			if val == "off" {
				spec.ProbeDirSize = -1
				break
			}
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("option %q: want probe_size=BYTES (a positive number) or probe_size=off", opt)
			}
			spec.ProbeDirSize = n
		case "allow_other":
			spec.Mount.AllowOther, spec.setOther = true, true
		case "default_permissions":
			spec.Mount.DefaultPermissions, spec.setPerms = true, true
		case "fsname":
			spec.Mount.FsName = val
		case "debug":
			spec.Mount.Debug = true
		case "io_uring":
			switch val {
			case "on", "1", "":
				spec.Mount.NoUring = false
			case "off", "0":
				spec.Mount.NoUring = true
			default:
				return fmt.Errorf("option %q: want io_uring=on or io_uring=off", opt)
			}
		case "io_uring_sched":
			class, ok := map[string]fuseloop.ReaperClass{"auto": fuseloop.ReaperAuto, "idle": fuseloop.ReaperIdle, "normal": fuseloop.ReaperNormal}[val]
			if !ok {
				return fmt.Errorf("option %q: want io_uring_sched=auto, idle or normal", opt)
			}
			spec.Mount.UringSched = class
		default:
			switch {
			case passThroughOptions[key] && !hasVal:
				spec.Mount.Extra = append(spec.Mount.Extra, key)
			case ignoredOptions[key], strings.HasPrefix(key, "x-"):
			default:
				spec.Unknown = append(spec.Unknown, opt)
			}
		}
	}
	return nil
}

// DefaultAccess turns on allow_other and default_permissions for root
// unless the options said otherwise: other users can then use the view and
// the kernel checks permissions, as with fuse-overlayfs.
func (s *MountSpec) DefaultAccess(euid int) {
	if euid != 0 {
		return
	}
	if !s.setOther {
		s.Mount.AllowOther = true
	}
	if !s.setPerms {
		s.Mount.DefaultPermissions = true
	}
}

// splitEscaped splits s at sep, keeping backslash escapes for unescape.
func splitEscaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			cur.WriteByte(c)
			cur.WriteByte(s[i+1])
			i++
			continue
		}
		if c == sep {
			parts = append(parts, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteByte(c)
	}
	return append(parts, cur.String())
}

func unescape(s string) string {
	if !strings.Contains(s, "\\") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
