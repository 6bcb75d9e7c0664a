package bench

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-fs/strata/bench/fixture"
	"github.com/strata-fs/strata/bench/target"
)

// lookupNames is how many distinct names each lookup benchmark looks up on
// one fresh mount, and how many each layer of the lookup set holds.
const lookupNames = 10_000

// The lookup layer set: deep layers (bottom with lookupNames files, one file
// in every other layer), a top lower layer and an upper template, each with
// lookupNames files of their own in fixture.DeepDir.
var lookupSet struct {
	once
	deep, top, upper string
}

func lookupLayers(b *testing.B) {
	lookupSet.do(b, func() error {
		root := filepath.Join(setup.root, "lookup")
		lookupSet.deep = filepath.Join(root, "deep")
		lookupSet.top = filepath.Join(root, "top")
		lookupSet.upper = filepath.Join(root, "upper")
		if err := fixture.WriteDeepLayers(lookupSet.deep, 1000, lookupNames); err != nil {
			return err
		}
		for _, l := range []struct{ root, prefix string }{{lookupSet.top, "t"}, {lookupSet.upper, "u"}} {
			layer := fixture.Layer{Root: l.root}
			for i := range lookupNames {
				if err := layer.WriteFile(namedIn(l.prefix, i), nil, 0o644); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func namedIn(prefix string, i int) string {
	return fmt.Sprintf("%s/%s%06d", fixture.DeepDir, prefix, i)
}

// lookupStack is depth lower layers: the top lower layer over depth-1 deep
// layers.
func lookupStack(depth int) []string {
	return append([]string{lookupSet.top}, fixture.DeepStack(lookupSet.deep, depth-1)...)
}

// BenchmarkLookup stats a name found in the upper layer, in the top lower
// layer, in the bottom layer of a 16-, 128- and 1,000-layer stack, and a
// name no layer has. Every timed lookup is the first of its name since the
// mount.
func BenchmarkLookup(b *testing.B) {
	cases := []struct {
		name  string
		depth int
		path  func(int) string
		want  error
	}{
		{"upper", 16, func(i int) string { return namedIn("u", i) }, nil},
		{"top-lower", 16, func(i int) string { return namedIn("t", i) }, nil},
		{"bottom-16", 16, fixture.BottomName, nil},
		{"bottom-128", 128, fixture.BottomName, nil},
		{"bottom-1000", 1000, fixture.BottomName, nil},
		{"missing-16", 16, fixture.MissingName, unix.ENOENT},
		{"missing-128", 128, fixture.MissingName, unix.ENOENT},
		{"missing-1000", 1000, fixture.MissingName, unix.ENOENT},
	}
	forEachTarget(b, func(b *testing.B, kind target.Kind) {
		lookupLayers(b)
		for _, c := range cases {
			b.Run(c.name, func(b *testing.B) {
				benchmarkFirstLookups(b, kind, lookupStack(c.depth), c.path, c.want)
			})
		}
	})
}

// benchmarkFirstLookups times batches of lookupNames lookups, each batch on
// a fresh mount, so every timed lookup is the first of its name and the cost
// of reading the directory from each layer is spread over the batch as it
// is in real use. ns/op is per batch; ns/lookup and daemon-cpu-ns/lookup
// are per name.
func benchmarkFirstLookups(b *testing.B, kind target.Kind, lowers []string, path func(int) string, want error) {
	b.ReportAllocs()
	var (
		cpu cpuMeter
		st  unix.Stat_t
	)
	b.StopTimer()
	for range b.N {
		m := mountFresh(b, kind, lowers, lookupSet.upper)
		cpu.begin(m)
		b.StartTimer()
		for i := range lookupNames {
			p := filepath.Join(m.Dir, path(i))
			err := unix.Lstat(p, &st)
			if !errors.Is(err, want) && !(err == nil && want == nil) {
				b.Fatalf("lstat %s: %v, want %v", p, err, want)
			}
		}
		b.StopTimer()
		cpu.end()
		if err := m.Unmount(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*lookupNames), "ns/lookup")
	cpu.reportPer(b, lookupNames, "daemon-cpu-ns/lookup")
}

// hugeDirFiles is how many files the bottom layer of the huge-directory
// stacks holds in fixture.DeepDir: the bench/compare data set's size.
const hugeDirFiles = 100_000

// The huge-directory layer set: deep layers whose bottom holds
// hugeDirFiles files.
var hugeSet struct {
	once
	deep string
}

func hugeDirLayers(b *testing.B) {
	hugeSet.do(b, func() error {
		hugeSet.deep = filepath.Join(setup.root, "huge")
		return fixture.WriteDeepLayers(hugeSet.deep, 1000, hugeDirFiles)
	})
}

// BenchmarkFirstLookupInHugeDir times the first stat on a fresh mount in
// a directory whose bottom layer holds 100,000 files, through 128 and
// 1,000 layers, with the page cache warm: the time a union takes before
// it can answer the first name of such a directory (strata reads the
// small layers and probes the big one; the whole merge follows in the
// background). ns/op is per first stat; ns/next-lookup is the mean of the
// 100 lookups of other names that follow.
func BenchmarkFirstLookupInHugeDir(b *testing.B) {
	forEachTarget(b, func(b *testing.B, kind target.Kind) {
		hugeDirLayers(b)
		for _, depth := range []int{128, 1000} {
			b.Run(fmt.Sprintf("layers-%d", depth), func(b *testing.B) {
				benchmarkFirstLookup(b, kind, fixture.DeepStack(hugeSet.deep, depth))
			})
		}
	})
}

func benchmarkFirstLookup(b *testing.B, kind target.Kind, lowers []string) {
	const next = 100
	var st unix.Stat_t
	var nextTime time.Duration
	b.StopTimer()
	for range b.N {
		m := mountFresh(b, kind, lowers, "")
		b.StartTimer()
		err := unix.Lstat(filepath.Join(m.Dir, fixture.MissingName(0)), &st)
		b.StopTimer()
		if !errors.Is(err, unix.ENOENT) {
			b.Fatalf("first lstat: %v, want ENOENT", err)
		}
		start := time.Now()
		for i := 1; i <= next; i++ {
			p := filepath.Join(m.Dir, fixture.BottomName(i*hugeDirFiles/next-1))
			if err := unix.Lstat(p, &st); err != nil {
				b.Fatal(err)
			}
		}
		nextTime += time.Since(start)
		if err := m.Unmount(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(nextTime.Nanoseconds())/float64(b.N*next), "ns/next-lookup")
}
