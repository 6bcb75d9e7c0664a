package fs

import (
	"reflect"
	"strings"
	"testing"

	"github.com/strata-fs/strata/fuseloop"
)

func TestParseMountOptions(t *testing.T) {
	var spec MountSpec
	err := ParseMountOptions(`lowerdir=/a\:b:/c,upperdir=/u\,x,workdir=/w,ro,nodev,noatime,allow_other,volatile,redirect_dir=on,bogus=1,x-systemd.automount`, &spec)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/a:b", "/c"}; !reflect.DeepEqual(spec.Lowers, want) {
		t.Errorf("lowers %q, want %q", spec.Lowers, want)
	}
	if spec.Upper != "/u,x" || spec.Work != "/w" {
		t.Errorf("upper %q work %q", spec.Upper, spec.Work)
	}
	if !spec.ReadOnly || !spec.Volatile || !spec.Mount.AllowOther {
		t.Errorf("flags not parsed: %+v", spec)
	}
	if want := []string{"nodev", "noatime"}; !reflect.DeepEqual(spec.Mount.Extra, want) {
		t.Errorf("extra %q, want %q", spec.Mount.Extra, want)
	}
	if want := []string{"bogus=1"}; !reflect.DeepEqual(spec.Unknown, want) {
		t.Errorf("unknown %q, want %q (an unknown option must be reported)", spec.Unknown, want)
	}
}

func TestParseMountOptionsFsync(t *testing.T) {
	var spec MountSpec
	ParseMountOptions("fsync=0", &spec)
	if !spec.Volatile {
		t.Error("fsync=0 must skip syncs")
	}
	ParseMountOptions("fsync=1", &spec)
	if spec.Volatile {
		t.Error("fsync=1 must sync")
	}
}

func TestParseMountOptionsEmptyLayer(t *testing.T) {
	var spec MountSpec
	if err := ParseMountOptions("lowerdir=/a::/b", &spec); err == nil {
		t.Error("an empty layer path was accepted")
	}
}

func TestDefaultAccess(t *testing.T) {
	var spec MountSpec
	spec.DefaultAccess(0)
	if !spec.Mount.AllowOther || !spec.Mount.DefaultPermissions {
		t.Error("root mounts default to allow_other,default_permissions")
	}
	var user MountSpec
	user.DefaultAccess(1000)
	if user.Mount.AllowOther {
		t.Error("a user mount must not ask for allow_other on its own")
	}
}

func TestMountFlags(t *testing.T) {
	if mountFlags(nil) == 0 {
		t.Fatal("mountFlags must never be 0 (go-fuse reads 0 as nosuid,nodev)")
	}
	f := mountFlags([]string{"ro", "nodev", "nosuid", "noexec", "noatime"})
	for _, bit := range []uintptr{1, 2, 4, 8, 1024} { // MS_RDONLY NOSUID NODEV NOEXEC NOATIME
		if f&bit == 0 {
			t.Errorf("flag %#x missing from %#x", bit, f)
		}
	}
	if mountFlags([]string{"nodev", "dev"})&4 != 0 {
		t.Error("a later dev must undo nodev")
	}
}

// FuzzParseMountOptions: any option string parses without panicking, and
// every layer path that comes out was in the input (after unescaping), so
// the parser never invents a directory.
func FuzzParseMountOptions(f *testing.F) {
	for _, s := range []string{"lowerdir=/a:/b,upperdir=/u,workdir=/w", `lowerdir=/a\:b`, "ro,,", "=,=", `\`, "lowerdir+=/x,lowerdir+=/y", "fsync=0,volatile"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var spec MountSpec
		if err := ParseMountOptions(s, &spec); err != nil {
			return
		}
		plain := strings.ReplaceAll(s, `\`, "")
		for _, l := range append(spec.Lowers, spec.Upper, spec.Work) {
			if !strings.Contains(plain, strings.ReplaceAll(l, `\`, "")) {
				t.Fatalf("path %q does not come from %q", l, s)
			}
		}
	})
}

func TestParseMountOptionsIoUring(t *testing.T) {
	var spec MountSpec
	if err := ParseMountOptions("io_uring=off", &spec); err != nil || !spec.Mount.NoUring {
		t.Errorf("io_uring=off: NoUring %v, err %v", spec.Mount.NoUring, err)
	}
	if err := ParseMountOptions("io_uring=on", &spec); err != nil || spec.Mount.NoUring {
		t.Errorf("io_uring=on: NoUring %v, err %v", spec.Mount.NoUring, err)
	}
	if err := ParseMountOptions("io_uring=maybe", &spec); err == nil {
		t.Error("io_uring=maybe was accepted")
	}
	for val, want := range map[string]fuseloop.ReaperClass{"normal": fuseloop.ReaperNormal, "idle": fuseloop.ReaperIdle, "auto": fuseloop.ReaperAuto} {
		if err := ParseMountOptions("io_uring_sched="+val, &spec); err != nil || spec.Mount.UringSched != want {
			t.Errorf("io_uring_sched=%s: UringSched %v, err %v", val, spec.Mount.UringSched, err)
		}
	}
	if err := ParseMountOptions("io_uring_sched=fifo", &spec); err == nil {
		t.Error("io_uring_sched=fifo was accepted")
	}
}

func TestParseMountOptionsProbeSize(t *testing.T) {
	for opt, want := range map[string]int64{"probe_size=4096": 4096, "probe_size=off": -1} {
		var spec MountSpec
		if err := ParseMountOptions(opt, &spec); err != nil || spec.ProbeDirSize != want {
			t.Errorf("%s: size %d (%v), want %d", opt, spec.ProbeDirSize, err, want)
		}
		cfg := Config{ProbeDirSize: spec.ProbeDirSize}
		if over := cfg.probeOver(); want > 0 && over != want || want < 0 && over != 0 {
			t.Errorf("%s: probes from %d bytes", opt, over)
		}
	}
	if over := (Config{}).probeOver(); over != DefaultProbeDirSize {
		t.Errorf("default: probes from %d bytes, want %d", over, DefaultProbeDirSize)
	}
	for _, bad := range []string{"probe_size=", "probe_size=0", "probe_size=-5", "probe_size=1k"} {
		var spec MountSpec
		if err := ParseMountOptions(bad, &spec); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}
