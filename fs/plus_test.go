package fs

import "testing"

// countAttrs asks the policy n times and counts the listings that give
// files attributes.
func countAttrs(p *plusPolicy, n int) int {
	with := 0
	for i := 0; i < n; i++ {
		if p.filesWithAttrs() {
			with++
		}
	}
	return with
}

func TestPlusPolicyFollowsTheWorkload(t *testing.T) {
	var p plusPolicy
	// No evidence yet: files come with attributes, but one listing in
	// plusSampleEvery stays bare to learn.
	if got, want := countAttrs(&p, 64), 64-64/plusSampleEvery; got != want {
		t.Fatalf("fresh policy: %d of 64 listings with attributes, want %d", got, want)
	}
	// A walker: files listed bare and never looked up.
	p.listedBare(200)
	if got := countAttrs(&p, 64); got != 0 {
		t.Fatalf("after 200 unused bare files: %d of 64 listings with attributes, want 0", got)
	}
	if p.filesWanted() {
		t.Fatal("files reported wanted after 200 unused bare files")
	}
	// ls -l: the files of bare listings are looked up one by one.
	for i := 0; i < 300; i++ {
		p.listedBare(1)
		p.bareLookedUp()
	}
	if !p.filesWanted() {
		t.Fatal("files not wanted after most bare files were looked up")
	}
	if got := countAttrs(&p, 64); got < 64-64/plusSampleEvery {
		t.Fatalf("after lookups: %d of 64 listings with attributes", got)
	}
}

// The counts decay, so old behaviour stops counting.
func TestPlusPolicyDecays(t *testing.T) {
	var p plusPolicy
	for i := 0; i < 10; i++ {
		p.listedBare(plusDecayAt - 1)
	}
	if p.bare >= plusDecayAt {
		t.Fatalf("bare count %v not decayed below %d", p.bare, plusDecayAt)
	}
}
