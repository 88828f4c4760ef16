package etcdstore

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Sentinel errors of this package, checked with errors.Is. Errors about
// records, names and domains wrap the sentinels of package store
// (store.ErrNotFound, store.ErrInvalidName, store.ErrBusy, ...) exactly as
// store.FileStore does; these two are specific to a store shared over the
// network.
var (
	// ErrLockLost: a write made while holding the domain's lock was refused
	// by etcd because the lock is no longer held: the lease behind it
	// expired (the process was paused or cut off from etcd for longer than
	// the lock's TTL) or was revoked, and another holder may have taken the
	// lock since. Nothing was written. The operation that made the write is
	// cut short, and whatever intent it left is settled by the next
	// holder's reconcile.
	//
	// It does not wrap store.ErrBusy: ErrBusy means the lock was never
	// taken and nothing was done, while ErrLockLost means the lock was held,
	// some writes may have been made under it, and the last one was
	// refused.
	ErrLockLost = errors.New("domain lock lost")

	// ErrUnavailable: etcd did not answer within the store's request
	// timeout (stopped, unreachable, no quorum), or the lock's lease could
	// not be kept alive while waiting for the lock. The underlying error is
	// wrapped too. A write that fails this way may or may not have been
	// applied: read back before deciding.
	ErrUnavailable = errors.New("etcd unavailable")
)

// unavailable reports whether err means etcd did not answer: the request
// timeout of this store ran out (while the caller's ctx did not), or gRPC
// gave up on the connection.
func unavailable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// wrapRPC gives an error from etcd the store's context: the caller's ctx
// error when that ended first, ErrUnavailable when etcd did not answer.
func (s *Store) wrapRPC(ctx context.Context, what string, err error) error {
	if unavailable(ctx, err) {
		return fmt.Errorf("etcdstore: %s: %w (endpoints %v, timeout %v): %w", what, ErrUnavailable, s.cli.Endpoints(), s.timeout, err)
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		return fmt.Errorf("etcdstore: %s: %w: %w", what, cerr, err)
	}
	return fmt.Errorf("etcdstore: %s: %w", what, err)
}
