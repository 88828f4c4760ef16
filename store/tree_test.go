package store_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/store"
)

func TestTree(t *testing.T) {
	//   base ─┬─ a ─── a1
	//         └─ b
	//   lone
	//   orphan (parent "gone" is missing) ─── orphan-child
	//   c1 <-> c2 (a cycle) ─── below-cycle
	rs := []*store.Record{
		{Name: "base"}, {Name: "a", Parent: "base"}, {Name: "b", Parent: "base"}, {Name: "a1", Parent: "a"},
		{Name: "lone"}, {Name: "orphan", Parent: "gone"}, {Name: "orphan-child", Parent: "orphan"},
		{Name: "c1", Parent: "c2"}, {Name: "c2", Parent: "c1"}, {Name: "below-cycle", Parent: "c1"},
		{Name: "a", Parent: "ignored duplicate"}, nil,
	}
	tree := store.BuildTree(rs)
	checks := []struct {
		what string
		got  []string
		want []string
	}{
		{"Roots", tree.Roots(), []string{"base", "lone"}},
		{"Children(base)", tree.Children("base"), []string{"a", "b"}},
		{"Children(a1)", tree.Children("a1"), nil},
		{"Children(missing)", tree.Children("missing"), nil},
		{"Leaves", tree.Leaves(), []string{"b", "a1", "lone", "orphan-child", "below-cycle"}},
		{"Descendants(base)", tree.Descendants("base"), []string{"a", "a1", "b"}},
		{"Descendants(c1)", tree.Descendants("c1"), []string{"c2", "below-cycle"}},
		{"Ancestors(a1)", tree.Ancestors("a1"), []string{"a", "base"}},
		{"Ancestors(orphan-child)", tree.Ancestors("orphan-child"), []string{"orphan"}},
		{"Ancestors(c1)", tree.Ancestors("c1"), []string{"c2"}},
		{"Dangling", tree.Dangling(), []string{"orphan"}},
		{"Cyclic", tree.Cyclic(), []string{"c1", "c2", "below-cycle"}},
	}
	for _, c := range checks {
		if diff := cmp.Diff(c.want, c.got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", c.what, diff)
		}
	}
	parents := []struct {
		name, parent string
		present      bool
	}{{"a1", "a", true}, {"base", "", false}, {"orphan", "gone", false}, {"missing", "", false}}
	for _, p := range parents {
		if got, ok := tree.Parent(p.name); got != p.parent || ok != p.present {
			t.Errorf("Parent(%q) = %q, %v; want %q, %v", p.name, got, ok, p.parent, p.present)
		}
	}
	if r := tree.Record("a"); r == nil || r.Parent != "base" {
		t.Errorf("Record(a) = %+v, want the first record named a", r)
	}
}

// TestTreeMatchesDefinition checks every Tree method on random parent
// links (shared subtrees, duplicates, missing parents, cycles) against a
// direct reading of its definition.
func TestTreeMatchesDefinition(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 200; round++ {
		n := 1 + rng.IntN(40)
		name := func(i int) string { return fmt.Sprintf("s%d", i) }
		var rs []*store.Record
		for i := 0; i < n; i++ {
			r := &store.Record{Name: name(rng.IntN(n + n/4))}
			switch k := rng.IntN(10); {
			case k < 2:
			case k < 3:
				r.Parent = "missing"
			default:
				r.Parent = name(rng.IntN(n + n/4))
			}
			rs = append(rs, r)
		}
		tree := store.BuildTree(rs)

		// The definition: the first record of each name, in order.
		var kept []*store.Record
		byName := map[string]*store.Record{}
		for _, r := range rs {
			if byName[r.Name] == nil {
				byName[r.Name] = r
				kept = append(kept, r)
			}
		}
		children := func(p string) []string {
			var out []string
			for _, r := range kept {
				if r.Parent == p && byName[p] != nil {
					out = append(out, r.Name)
				}
			}
			return out
		}
		var descend func(string, map[string]bool, *[]string)
		descend = func(n string, seen map[string]bool, out *[]string) {
			for _, c := range children(n) {
				if !seen[c] {
					seen[c] = true
					*out = append(*out, c)
					descend(c, seen, out)
				}
			}
		}
		var roots, leaves, dangling, cyclic []string
		reached := map[string]bool{}
		for _, r := range kept {
			if r.Parent == "" {
				roots = append(roots, r.Name)
			} else if byName[r.Parent] == nil {
				dangling = append(dangling, r.Name)
			}
			if len(children(r.Name)) == 0 {
				leaves = append(leaves, r.Name)
			}
		}
		for _, s := range append(append([]string(nil), roots...), dangling...) {
			reached[s] = true
			var below []string
			descend(s, reached, &below)
		}
		for _, r := range kept {
			if !reached[r.Name] {
				cyclic = append(cyclic, r.Name)
			}
		}
		for what, c := range map[string][2][]string{
			"Roots": {roots, tree.Roots()}, "Leaves": {leaves, tree.Leaves()},
			"Dangling": {dangling, tree.Dangling()}, "Cyclic": {cyclic, tree.Cyclic()},
		} {
			if diff := cmp.Diff(c[0], c[1]); diff != "" {
				t.Fatalf("round %d: %s (-want +got):\n%s", round, what, diff)
			}
		}
		for i := 0; i < n+n/4; i++ {
			s := name(i)
			var desc []string
			descend(s, map[string]bool{s: true}, &desc)
			if byName[s] == nil {
				desc = nil
			}
			if diff := cmp.Diff(children(s), tree.Children(s)); diff != "" {
				t.Fatalf("round %d: Children(%s) (-want +got):\n%s", round, s, diff)
			}
			if diff := cmp.Diff(desc, tree.Descendants(s)); diff != "" {
				t.Fatalf("round %d: Descendants(%s) (-want +got):\n%s", round, s, diff)
			}
			if tree.Record(s) != byName[s] {
				t.Fatalf("round %d: Record(%s) is not the first record of that name", round, s)
			}
			wantParent, wantPresent := "", false
			if r := byName[s]; r != nil && r.Parent != "" {
				wantParent, wantPresent = r.Parent, byName[r.Parent] != nil
			}
			if p, ok := tree.Parent(s); p != wantParent || ok != wantPresent {
				t.Fatalf("round %d: Parent(%s) = %q, %v; want %q, %v", round, s, p, ok, wantParent, wantPresent)
			}
		}
	}
}
