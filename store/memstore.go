package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// MemStore is a Store in memory, for tests and for toolstacks that keep
// metadata elsewhere. Records are kept in their file form, so a MemStore
// accepts, refuses and returns exactly what a FileStore does.
type MemStore struct {
	mu      sync.Mutex
	domains map[string]*memDomain
}

type memDomain struct {
	lock    chan struct{}
	records map[string][]byte
	current string
}

var (
	_ Store     = (*MemStore)(nil)
	_ Committer = (*MemStore)(nil)
)

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{domains: make(map[string]*memDomain)}
}

func (s *MemStore) domain(domain string) (*memDomain, error) {
	if err := ValidateDomain(domain); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.domains[domain]
	if d == nil {
		d = &memDomain{lock: make(chan struct{}, 1), records: make(map[string][]byte)}
		s.domains[domain] = d
	}
	return d, nil
}

// Lock implements Store.
func (s *MemStore) Lock(ctx context.Context, domain string) (func() error, error) {
	d, err := s.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: domain %s: lock: %w: %w", domain, ErrBusy, err)
	}
	select {
	case d.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("store: domain %s: lock: %w: %w", domain, ErrBusy, ctx.Err())
	}
	var once sync.Once
	return func() error {
		once.Do(func() { <-d.lock })
		return nil
	}, nil
}

// Put implements Store.
func (s *MemStore) Put(ctx context.Context, domain string, r *Record) error {
	d, err := s.domain(domain)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := Marshal(r)
	if err != nil {
		return fmt.Errorf("store: domain %s: %w", domain, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d.records[r.Name] = data
	return nil
}

// Commit implements Committer: the record and the current snapshot change
// together, under one lock.
func (s *MemStore) Commit(ctx context.Context, domain string, r *Record, makeCurrent bool) error {
	d, err := s.domain(domain)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	data, err := Marshal(r)
	if err != nil {
		return fmt.Errorf("store: domain %s: %w", domain, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d.records[r.Name] = data
	if makeCurrent {
		d.current = r.Name
	}
	return nil
}

// Get implements Store.
func (s *MemStore) Get(ctx context.Context, domain, name string) (*Record, error) {
	d, err := s.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	data, ok := d.records[name]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, ErrNotFound)
	}
	r, err := Unmarshal(data)
	if err != nil {
		return nil, &RecordError{Domain: domain, Name: name, Err: err}
	}
	return r, nil
}

// Delete implements Store.
func (s *MemStore) Delete(ctx context.Context, domain, name string) error {
	d, err := s.domain(domain)
	if err != nil {
		return err
	}
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := d.records[name]; !ok {
		return fmt.Errorf("store: domain %s: snapshot %q: %w", domain, name, ErrNotFound)
	}
	delete(d.records, name)
	if d.current == name {
		d.current = ""
	}
	return nil
}

// List implements Store.
func (s *MemStore) List(ctx context.Context, domain string) ([]*Record, error) {
	d, err := s.domain(domain)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	all := make(map[string][]byte, len(d.records))
	for name, data := range d.records {
		all[name] = data
	}
	s.mu.Unlock()
	out := make([]*Record, 0, len(all))
	var errs []error
	for name, data := range all {
		r, err := Unmarshal(data)
		if err != nil {
			errs = append(errs, &RecordError{Domain: domain, Name: name, Err: err})
			continue
		}
		out = append(out, r)
	}
	sortRecords(out)
	if err := errors.Join(errs...); err != nil {
		return out, fmt.Errorf("store: domain %s: some snapshot records cannot be read: %w", domain, err)
	}
	return out, nil
}

// Current implements Store.
func (s *MemStore) Current(ctx context.Context, domain string) (string, error) {
	d, err := s.domain(domain)
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return d.current, nil
}

// SetCurrent implements Store.
func (s *MemStore) SetCurrent(ctx context.Context, domain, name string) error {
	d, err := s.domain(domain)
	if err != nil {
		return err
	}
	if name != "" {
		if err := ValidateName(name); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := d.records[name]; name != "" && !ok {
		return fmt.Errorf("store: domain %s: making snapshot %q current: %w", domain, name, ErrNotFound)
	}
	d.current = name
	return nil
}

// sortRecords sorts records by creation time, then name.
func sortRecords(rs []*Record) {
	keys := sortedKeys(rs)
	for i := range keys {
		rs[i] = keys[i].r
	}
}

// recordKey is what records are sorted by, copied out of the record so
// that a sort does not chase a pointer per comparison. The records come
// from Unmarshal, so their times carry no monotonic clock reading, and
// comparing seconds, then nanoseconds, is comparing the times.
type recordKey struct {
	sec  int64
	nsec int
	name string
	r    *Record
}

func keyOf(r *Record) recordKey {
	return recordKey{r.CreationTime.Unix(), r.CreationTime.Nanosecond(), r.Name, r}
}

// sortedKeys returns the keys of rs, sorted.
func sortedKeys(rs []*Record) []recordKey {
	keys := make([]recordKey, len(rs))
	for i, r := range rs {
		keys[i] = keyOf(r)
	}
	slices.SortFunc(keys, compareKeys)
	return keys
}

func compareKeys(a, b recordKey) int {
	if a.sec != b.sec {
		return cmp.Compare(a.sec, b.sec)
	}
	if a.nsec != b.nsec {
		return cmp.Compare(a.nsec, b.nsec)
	}
	return strings.Compare(a.name, b.name)
}

// mergeKeys merges sorted runs of keys into one sorted slice of records.
func mergeKeys(runs [][]recordKey) []*Record {
	for len(runs) > 2 {
		next := runs[:0:0]
		for i := 0; i+1 < len(runs); i += 2 {
			m := make([]recordKey, 0, len(runs[i])+len(runs[i+1]))
			next = append(next, merge2(m, runs[i], runs[i+1], func(k recordKey) recordKey { return k }))
		}
		if len(runs)%2 == 1 {
			next = append(next, runs[len(runs)-1])
		}
		runs = next
	}
	var a, b []recordKey
	switch len(runs) {
	case 2:
		a, b = runs[0], runs[1]
	case 1:
		a = runs[0]
	}
	return merge2(make([]*Record, 0, len(a)+len(b)), a, b, func(k recordKey) *Record { return k.r })
}

// merge2 appends to out the sorted keys of a and b, in order, as f makes
// them.
func merge2[T any](out []T, a, b []recordKey, f func(recordKey) T) []T {
	for len(a) > 0 && len(b) > 0 {
		if compareKeys(a[0], b[0]) <= 0 {
			out, a = append(out, f(a[0])), a[1:]
		} else {
			out, b = append(out, f(b[0])), b[1:]
		}
	}
	for _, k := range a {
		out = append(out, f(k))
	}
	for _, k := range b {
		out = append(out, f(k))
	}
	return out
}
