//go:build !(linux || darwin || freebsd)

package store

import (
	"context"
	"fmt"
	"runtime"
)

// NewFileStore fails on this operating system with an error wrapping
// ErrUnsupported: FileStore needs openat, renameat, unlinkat and flock,
// which it uses on Linux, macOS and FreeBSD. Use MemStore or a Store of
// your own here.
func NewFileStore(root string) (*FileStore, error) {
	if root == "" {
		root = DefaultRoot
	}
	return nil, unsupported(root)
}

func (s *FileStore) unsupported() error {
	root := ""
	if s != nil {
		root = s.root
	}
	return unsupported(root)
}

func unsupported(root string) error {
	return fmt.Errorf("store: file store at %s on %s: %w", root, runtime.GOOS, ErrUnsupported)
}

// Lock fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) Lock(ctx context.Context, domain string) (func() error, error) {
	return nil, s.unsupported()
}

// Put fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) Put(ctx context.Context, domain string, r *Record) error {
	return s.unsupported()
}

// Get fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) Get(ctx context.Context, domain, name string) (*Record, error) {
	return nil, s.unsupported()
}

// Delete fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) Delete(ctx context.Context, domain, name string) error {
	return s.unsupported()
}

// List fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) List(ctx context.Context, domain string) ([]*Record, error) {
	return nil, s.unsupported()
}

// Current fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) Current(ctx context.Context, domain string) (string, error) {
	return "", s.unsupported()
}

// SetCurrent fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) SetCurrent(ctx context.Context, domain, name string) error {
	return s.unsupported()
}

// Commit fails with an error wrapping ErrUnsupported on this system.
func (s *FileStore) Commit(ctx context.Context, domain string, r *Record, makeCurrent bool) error {
	return s.unsupported()
}
