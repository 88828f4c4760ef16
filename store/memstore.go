package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
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

func sortRecords(rs []*Record) {
	slices.SortFunc(rs, func(a, b *Record) int {
		if c := a.CreationTime.Compare(b.CreationTime); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}
