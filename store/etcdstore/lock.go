package etcdstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/vmsnap/vmsnap/store"
)

// fence identifies one holding of a domain lock: the lock key and the
// revision that created it. Writes made under the lock compare both.
type fence struct {
	sess  *concurrency.Session
	lease clientv3.LeaseID
	key   string
	rev   int64
	// revoked is set by the first revoke (unlock or Close).
	revoked atomic.Bool
}

// cmp is the fencing condition of a transaction: the lock key still
// exists and is the one this holding created. It fails once the lease has
// expired or been revoked, even if the same lease ID were ever reused.
func (f *fence) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev)
}

// heldFence returns the fence of the domain lock this Store holds, nil
// when it holds none.
func (s *Store) heldFence(domain string) *fence {
	s.mu.Lock()
	defer s.mu.Unlock()
	if dl := s.domains[domain]; dl != nil {
		return dl.held
	}
	return nil
}

func (s *Store) ref(domain string) *domainLock {
	s.mu.Lock()
	defer s.mu.Unlock()
	dl := s.domains[domain]
	if dl == nil {
		dl = &domainLock{ch: make(chan struct{}, 1)}
		s.domains[domain] = dl
	}
	dl.refs++
	return dl
}

func (s *Store) unref(domain string, dl *domainLock) {
	s.mu.Lock()
	defer s.mu.Unlock()
	dl.refs--
	if dl.refs == 0 {
		delete(s.domains, domain)
	}
}

// Lock implements store.Store. It grants a lease of Options.LockTTL, puts
// a key under <prefix>/<domain>/lock/ with it, and waits until that key is
// the oldest there; the lease is kept alive until unlock, which revokes it.
//
// It fails with an error wrapping store.ErrBusy and ctx.Err() when ctx
// ends first, wrapping ErrUnavailable when etcd does not answer within the
// request timeout, and wrapping ErrLockLost when the lease ends while
// waiting (etcd unreachable for longer than the TTL, or the lease
// revoked). A failed Lock leaves no key behind: its lease is revoked, or
// expires within the TTL when etcd cannot be reached.
//
// unlock returns an error wrapping ErrLockLost if the lock was lost while
// held, so that a caller learns that its last writes may have been
// refused.
func (s *Store) Lock(ctx context.Context, domain string) (func() error, error) {
	if err := store.ValidateDomain(domain); err != nil {
		return nil, err
	}
	busy := func(err error) error {
		return fmt.Errorf("etcdstore: domain %s: lock: %w: %w", domain, store.ErrBusy, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, busy(err)
	}
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	dl := s.ref(domain)
	select {
	case dl.ch <- struct{}{}:
	case <-ctx.Done():
		s.unref(domain, dl)
		return nil, busy(ctx.Err())
	}
	release := func() {
		<-dl.ch
		s.unref(domain, dl)
	}
	f, err := s.acquire(ctx, domain)
	if err != nil {
		release()
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, store.ErrBusy) {
			return nil, fmt.Errorf("%w: %w", busy(cerr), err)
		}
		return nil, err
	}
	s.mu.Lock()
	closed := s.closed
	if !closed {
		dl.held = f
	}
	s.mu.Unlock()
	if closed {
		_ = s.revoke(f)
		release()
		return nil, errClosed
	}
	var (
		once sync.Once
		uerr error
	)
	return func() error {
		once.Do(func() {
			s.mu.Lock()
			dl.held = nil
			s.mu.Unlock()
			uerr = s.unlock(domain, f)
			release()
		})
		return uerr
	}, nil
}

// acquire takes the domain's lock in etcd.
func (s *Store) acquire(ctx context.Context, domain string) (*fence, error) {
	rctx, cancel := s.rpcContext(ctx)
	grant, err := s.cli.Grant(rctx, s.ttl)
	cancel()
	if err != nil {
		return nil, s.wrapRPC(ctx, fmt.Sprintf("domain %s: lock: granting a lease", domain), err)
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithLease(grant.ID), concurrency.WithTTL(int(s.ttl)), concurrency.WithContext(s.ctx))
	if err != nil {
		s.revokeLease(grant.ID)
		return nil, s.wrapRPC(ctx, fmt.Sprintf("domain %s: lock: keeping lease %x alive", domain, int64(grant.ID)), err)
	}
	f := &fence{sess: sess, lease: grant.ID, key: fmt.Sprintf("%s%016x", s.lockPrefix(domain), int64(grant.ID))}
	if err := s.wait(ctx, domain, f); err != nil {
		sess.Orphan()
		s.revokeLease(grant.ID)
		return nil, err
	}
	return f, nil
}

// wait enqueues f's key and waits until it is the oldest of the domain's
// lock keys, or ctx ends, or f's lease ends.
func (s *Store) wait(ctx context.Context, domain string, f *fence) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-f.sess.Done():
			cancel()
		case <-wctx.Done():
		}
	}()
	what := fmt.Sprintf("domain %s: lock", domain)
	leaseEnded := func() error {
		return fmt.Errorf("etcdstore: %s: %w: lease %x ended while waiting (etcd unreachable for longer than the %ds TTL, or the lease was revoked)", what, ErrLockLost, int64(f.lease), s.ttl)
	}
	fail := func(err error) error {
		select {
		case <-f.sess.Done():
			if ctx.Err() == nil {
				return leaseEnded()
			}
		default:
		}
		return s.wrapRPC(ctx, what, err)
	}
	pfx := s.lockPrefix(domain)
	owner := clientv3.OpGet(pfx, append(clientv3.WithFirstCreate(), clientv3.WithPrefix())...)
	rctx, rcancel := s.rpcContext(wctx)
	resp, err := s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(f.key), "=", 0)).
		Then(clientv3.OpPut(f.key, s.holder, clientv3.WithLease(f.lease)), owner).
		Else(clientv3.OpGet(f.key), owner).
		Commit()
	rcancel()
	if err != nil {
		return fail(err)
	}
	f.rev = resp.Header.Revision
	if !resp.Succeeded {
		f.rev = resp.Responses[0].GetResponseRange().Kvs[0].CreateRevision
	}
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 && kvs[0].CreateRevision == f.rev {
		return nil
	}
	// Wait for every older key to go, newest first.
	older := append(clientv3.WithLastCreate(), clientv3.WithPrefix(), clientv3.WithMaxCreateRev(f.rev-1))
	for {
		rctx, rcancel := s.rpcContext(wctx)
		g, err := s.cli.Get(rctx, pfx, older...)
		rcancel()
		if err != nil {
			return fail(err)
		}
		if len(g.Kvs) == 0 {
			break
		}
		if err := s.waitDelete(wctx, string(g.Kvs[0].Key), g.Header.Revision+1); err != nil {
			return fail(err)
		}
	}
	// The lease may have ended while the older keys went.
	rctx, rcancel = s.rpcContext(wctx)
	g, err := s.cli.Get(rctx, f.key)
	rcancel()
	if err != nil {
		return fail(err)
	}
	if len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != f.rev {
		return leaseEnded()
	}
	return nil
}

// waitDelete waits until key is deleted at or after revision rev.
func (s *Store) waitDelete(ctx context.Context, key string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for wr := range s.cli.Watch(wctx, key, clientv3.WithRev(rev)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch ended before the lock key was deleted")
}

// unlock releases a holding by revoking its lease, which deletes its key.
func (s *Store) unlock(domain string, f *fence) error {
	if f.revoked.Load() {
		return nil // Close released it
	}
	lost := false
	select {
	case <-f.sess.Done():
		lost = true
	default:
	}
	// Check the fence before revoking, to tell the caller if the lock had
	// been lost.
	ctx, cancel := s.rpcContext(s.ctx)
	g, gerr := s.cli.Get(ctx, f.key)
	cancel()
	if gerr == nil && (len(g.Kvs) == 0 || g.Kvs[0].CreateRevision != f.rev) {
		lost = true
	}
	err := s.revoke(f)
	if lost {
		return fmt.Errorf("etcdstore: domain %s: unlock: %w: lease %x had ended before unlock", domain, ErrLockLost, int64(f.lease))
	}
	if err != nil {
		return fmt.Errorf("etcdstore: domain %s: unlock: %w", domain, err)
	}
	return nil
}

// revoke stops renewing f's lease and revokes it. When etcd cannot be
// reached the lease expires on its own within the TTL.
func (s *Store) revoke(f *fence) error {
	if !f.revoked.CompareAndSwap(false, true) {
		return nil
	}
	f.sess.Orphan()
	return s.revokeLease(f.lease)
}

func (s *Store) revokeLease(id clientv3.LeaseID) error {
	ctx, cancel := s.rpcContext(context.Background())
	defer cancel()
	_, err := s.cli.Revoke(ctx, id)
	if err != nil && !isLeaseNotFound(err) {
		return fmt.Errorf("etcdstore: revoking lease %x (it expires within the TTL): %w", int64(id), err)
	}
	return nil
}

func isLeaseNotFound(err error) bool { return errors.Is(err, rpctypes.ErrLeaseNotFound) }

func sortRecords(rs []*store.Record) {
	slices.SortFunc(rs, func(a, b *store.Record) int {
		if c := a.CreationTime.Compare(b.CreationTime); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}
