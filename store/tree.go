package store

import "slices"

// Tree is the parent/child structure of one domain's snapshots, built from
// records (usually List's result). It is a read-only snapshot of them.
// Orders follow the order of the records given (List sorts by creation
// time, then name).
type Tree struct {
	order    []string
	records  map[string]*Record
	children map[string][]string
}

// BuildTree indexes records by name. If two records share a name the first
// one wins.
func BuildTree(records []*Record) *Tree {
	t := &Tree{
		records:  make(map[string]*Record, len(records)),
		children: make(map[string][]string),
	}
	for _, r := range records {
		if r == nil {
			continue
		}
		if _, dup := t.records[r.Name]; dup {
			continue
		}
		t.records[r.Name] = r
		t.order = append(t.order, r.Name)
	}
	for _, name := range t.order {
		if p := t.records[name].Parent; p != "" {
			if _, ok := t.records[p]; ok {
				t.children[p] = append(t.children[p], name)
			}
		}
	}
	return t
}

// Record returns the named record, or nil.
func (t *Tree) Record(name string) *Record { return t.records[name] }

// Parent returns the parent's name of the named snapshot and whether that
// parent is present in the tree. For a root it returns "", false.
func (t *Tree) Parent(name string) (string, bool) {
	r, ok := t.records[name]
	if !ok || r.Parent == "" {
		return "", false
	}
	_, present := t.records[r.Parent]
	return r.Parent, present
}

// Children returns the names of the snapshots whose parent is name.
func (t *Tree) Children(name string) []string { return slices.Clone(t.children[name]) }

// Roots returns the snapshots without a parent.
func (t *Tree) Roots() []string {
	var out []string
	for _, name := range t.order {
		if t.records[name].Parent == "" {
			out = append(out, name)
		}
	}
	return out
}

// Leaves returns the snapshots without children.
func (t *Tree) Leaves() []string {
	var out []string
	for _, name := range t.order {
		if len(t.children[name]) == 0 {
			out = append(out, name)
		}
	}
	return out
}

// Dangling returns the snapshots whose parent has no record. They are
// reported rather than treated as roots: the metadata is inconsistent.
func (t *Tree) Dangling() []string {
	var out []string
	for _, name := range t.order {
		if p := t.records[name].Parent; p != "" {
			if _, ok := t.records[p]; !ok {
				out = append(out, name)
			}
		}
	}
	return out
}

// Cyclic returns the snapshots that cannot be reached from a root or a
// dangling snapshot: they are on, or below, a cycle of parent links.
func (t *Tree) Cyclic() []string {
	reached := make(map[string]bool, len(t.order))
	for _, start := range append(t.Roots(), t.Dangling()...) {
		reached[start] = true
		for _, d := range t.Descendants(start) {
			reached[d] = true
		}
	}
	var out []string
	for _, name := range t.order {
		if !reached[name] {
			out = append(out, name)
		}
	}
	return out
}

// Descendants returns every snapshot below name, depth first, parents
// before their children. It terminates on cyclic data.
func (t *Tree) Descendants(name string) []string {
	var out []string
	seen := map[string]bool{name: true}
	var walk func(string)
	walk = func(n string) {
		for _, c := range t.children[n] {
			if seen[c] {
				continue
			}
			seen[c] = true
			out = append(out, c)
			walk(c)
		}
	}
	walk(name)
	return out
}

// Ancestors returns the parent of name, its parent, and so on up to a root
// (or to a missing parent). It terminates on cyclic data.
func (t *Tree) Ancestors(name string) []string {
	var out []string
	seen := map[string]bool{name: true}
	for {
		p, ok := t.Parent(name)
		if !ok || seen[p] {
			return out
		}
		seen[p] = true
		out = append(out, p)
		name = p
	}
}
