package runner

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeRoot is a directory with just an /etc/passwd and /etc/group.
func fakeRoot(t *testing.T, passwd, group string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"passwd": passwd, "group": group} {
		if err := os.WriteFile(filepath.Join(root, "etc", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolveUser(t *testing.T) {
	root := fakeRoot(t,
		"root:x:0:0:root:/root:/bin/sh\n# comment\nmalformed line\napp:x:1000:1000::/home/app:/bin/sh\n",
		"root:x:0:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:other\n")
	cases := []struct {
		spec   string
		want   credential
		errSub string
	}{
		{"", credential{UID: 0, GID: 0, Groups: []uint32{0}, Home: "/root"}, ""},
		{"app", credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 10}, Home: "/home/app"}, ""},
		{"1000", credential{UID: 1000, GID: 1000, Groups: []uint32{1000, 10}, Home: "/home/app"}, ""},
		{"app:audio", credential{UID: 1000, GID: 29, Groups: []uint32{29, 10}, Home: "/home/app"}, ""},
		{"4242:77", credential{UID: 4242, GID: 77, Groups: []uint32{77}, Home: "/"}, ""},
		{"nobody", credential{}, "unknown user"},
		{"app:nogroup", credential{}, "unknown group"},
		{":10", credential{}, "empty user"},
	}
	for _, c := range cases {
		got, err := resolveUser(root, c.spec)
		if c.errSub != "" {
			if err == nil || !strings.Contains(err.Error(), c.errSub) {
				t.Errorf("%q: got %+v, %v; want an error with %q", c.spec, got, err, c.errSub)
			}
			continue
		}
		if err != nil || got.UID != c.want.UID || got.GID != c.want.GID || got.Home != c.want.Home || !slices.Equal(got.Groups, c.want.Groups) {
			t.Errorf("%q: got %+v, %v; want %+v", c.spec, got, err, c.want)
		}
	}
}

// TestResolveUserStaysInTheImage: an image whose /etc/passwd is an absolute
// symlink to /etc/shadow gets its own /etc/shadow, never the host's.
func TestResolveUserStaysInTheImage(t *testing.T) {
	root := fakeRoot(t, "", "")
	passwd := filepath.Join(root, "etc/passwd")
	if err := os.Remove(passwd); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/image-users", passwd); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/image-users"), []byte("inside:x:7:7::/in:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveUser(root, "inside"); err != nil || got.UID != 7 {
		t.Fatalf("got %+v, %v; want the image's user through the symlink", got, err)
	}
	if err := os.Remove(passwd); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../../../../../../etc/passwd", passwd); err != nil {
		t.Fatal(err)
	}
	if _, err := resolveUser(root, "root"); err == nil {
		t.Fatal("a passwd symlink climbing out of the image reached the host's root user")
	}
}

func TestParseVolume(t *testing.T) {
	good := map[string]Volume{
		"/h:/c":    {Source: "/h", Target: "/c"},
		"/h:/c:ro": {Source: "/h", Target: "/c", ReadOnly: true},
		"/h:/c:rw": {Source: "/h", Target: "/c"},
	}
	for in, want := range good {
		if got, err := ParseVolume(in); err != nil || got != want {
			t.Errorf("ParseVolume(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"/h", "/h:/c:rx", ":/c", "/h:", "/a:/b:ro:x"} {
		if _, err := ParseVolume(bad); err == nil {
			t.Errorf("ParseVolume(%q) succeeded", bad)
		}
	}
}
