package etcdstore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/vmsnap/vmsnap/store"
)

func TestParseURL(t *testing.T) {
	tests := []struct {
		url       string
		endpoints []string
		prefix    string
		user      string
		pass      string
		tls       TLSFiles
		ttl       time.Duration
		timeout   time.Duration
	}{
		{url: "etcd://127.0.0.1:2379", endpoints: []string{"http://127.0.0.1:2379"}},
		{url: "etcd://127.0.0.1:2379/", endpoints: []string{"http://127.0.0.1:2379"}},
		{url: "etcd://a:1,b:2,[::1]:3/fleet/prod", endpoints: []string{"http://a:1", "http://b:2", "http://[::1]:3"}, prefix: "/fleet/prod"},
		{url: "etcds://a:2379/p/", endpoints: []string{"https://a:2379"}, prefix: "/p"},
		{url: "etcd://a:2379/p?cacert=/ca.pem&cert=/c.pem&key=/k.pem&lock-ttl=20s&timeout=2s",
			endpoints: []string{"https://a:2379"}, prefix: "/p", tls: TLSFiles{CACert: "/ca.pem", Cert: "/c.pem", Key: "/k.pem"}, ttl: 20 * time.Second, timeout: 2 * time.Second},
		{url: "etcd://root:s%40cret@a:2379/p%20q", endpoints: []string{"http://a:2379"}, prefix: "/p q", user: "root", pass: "s@cret"},
	}
	for _, tc := range tests {
		cfg, opts, tf, err := ParseURL(tc.url)
		if err != nil {
			t.Errorf("ParseURL(%q): %v", tc.url, err)
			continue
		}
		if diff := cmp.Diff(tc.endpoints, cfg.Endpoints); diff != "" {
			t.Errorf("ParseURL(%q) endpoints (-want +got):\n%s", tc.url, diff)
		}
		if opts.Prefix != tc.prefix || tf != tc.tls || cfg.Username != tc.user || cfg.Password != tc.pass ||
			opts.LockTTL != tc.ttl || opts.RequestTimeout != tc.timeout {
			t.Errorf("ParseURL(%q) = prefix %q, tls %+v, user %q:%q, ttl %v, timeout %v", tc.url, opts.Prefix, tf, cfg.Username, cfg.Password, opts.LockTTL, opts.RequestTimeout)
		}
	}
	for _, bad := range []string{
		"", "/var/lib/xen/snapshots", "http://a:2379/p", "etcd://", "etcd:///p", "etcd://a/p", "etcd://a:0/p",
		"etcd://a:99999/p", "etcd://a:1,,b:2/p", "etcd://a:1/p?bogus=1", "etcd://a:1/p?lock-ttl=soon",
		"etcd://a:1/p?timeout=-1s", "etcd://a:1/p?cacert=x&cacert=y", "etcd://:pw@a:1/p", "etcd://:1/p",
	} {
		if _, _, _, err := ParseURL(bad); err == nil {
			t.Errorf("ParseURL(%q) accepted", bad)
		}
	}
	_, _, _, err := ParseURL("etcd://root:hunter2@a/p")
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error shows the password: %v", err)
	}
	if !IsURL("etcd://a:1/p") || !IsURL("etcds://a:1") || IsURL("/var/lib/xen/snapshots") {
		t.Error("IsURL")
	}
}

// TestOpenURL opens a store by URL against a plain etcd.
func TestOpenURL(t *testing.T) {
	srv := startEtcd(t)
	ctx := testContext(t)
	s, err := OpenURL(ctx, "etcd://"+srv.client+"/by-url?lock-ttl=3s", TLSFiles{})
	must(t, err)
	t.Cleanup(func() { s.Close() })
	if s.Prefix() != "/by-url" || s.ttl != 3 {
		t.Errorf("prefix %q, ttl %ds", s.Prefix(), s.ttl)
	}
	must(t, s.Put(ctx, dom, &store.Record{Name: "a"}))
	resp, err := s.Client().Get(ctx, "/by-url/"+dom+"/snapshots/a")
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `name = "a"`) {
		t.Errorf("record key: %v, %v", resp, err)
	}
	if _, err := OpenURL(ctx, "etcd://"+freePort(t)+"/p?timeout=500ms", TLSFiles{}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("OpenURL of a port without etcd: %v, want ErrUnavailable", err)
	}
}

// TestTLS runs etcd with TLS and client certificate authentication: the
// store connects with the CA and a client certificate, given in the URL
// or as TLSFiles, and not without the client certificate.
func TestTLS(t *testing.T) {
	requireEtcd(t)
	dir := t.TempDir()
	ca, caKey := newCA(t)
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", ca.Raw)
	issue(t, dir, "server", ca, caKey, x509.ExtKeyUsageServerAuth)
	issue(t, dir, "client", ca, caKey, x509.ExtKeyUsageClientAuth)
	srv := startEtcd(t, "--cert-file", filepath.Join(dir, "server.pem"), "--key-file", filepath.Join(dir, "server-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth")
	ctx := testContext(t)
	files := TLSFiles{CACert: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "client.pem"), Key: filepath.Join(dir, "client-key.pem")}
	var s *Store
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err = OpenURL(ctx, "etcd://"+srv.client+"/tls?timeout=1s", files)
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	must(t, err)
	t.Cleanup(func() { s.Close() })
	unlock, err := s.Lock(ctx, dom)
	must(t, err)
	must(t, s.Put(ctx, dom, &store.Record{Name: "over-tls"}))
	must(t, unlock())

	q := "?cacert=" + files.CACert + "&cert=" + files.Cert + "&key=" + files.Key
	s2, err := OpenURL(ctx, "etcds://"+srv.client+"/tls"+q, TLSFiles{})
	must(t, err)
	t.Cleanup(func() { s2.Close() })
	if _, err := s2.Get(ctx, dom, "over-tls"); err != nil {
		t.Errorf("Get over TLS with the URL's files: %v", err)
	}
	if _, err := OpenURL(ctx, "etcds://"+srv.client+"/tls?timeout=1s&cacert="+files.CACert, TLSFiles{}); err == nil {
		t.Error("connected without a client certificate to an etcd that requires one")
	}
	if _, err := OpenURL(ctx, "etcd://"+srv.client+"/tls?timeout=1s", TLSFiles{}); err == nil {
		t.Error("connected without TLS to an etcd that serves TLS")
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdstore test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(t, err)
	cert, err := x509.ParseCertificate(der)
	must(t, err)
	return cert, key
}

// issue writes <name>.pem and <name>-key.pem, a certificate for 127.0.0.1
// signed by ca.
func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	must(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	must(t, err)
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	kder, err := x509.MarshalECPrivateKey(key)
	must(t, err)
	writePEM(t, filepath.Join(dir, name+"-key.pem"), "EC PRIVATE KEY", kder)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	must(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

func TestOpenSpec(t *testing.T) {
	srv := startEtcd(t)
	ctx := t.Context()
	var tf TLSFiles
	fs := flag.NewFlagSet("xlsnap", flag.ContinueOnError)
	tf.RegisterFlags(fs)
	must(t, fs.Parse([]string{"--etcd-cacert", "/ca.pem"}))
	sub := flag.NewFlagSet("snapshot-list", flag.ContinueOnError)
	tf.RegisterFlags(sub)
	must(t, sub.Parse([]string{"--etcd-cert", "/c.pem", "--etcd-key", "/k.pem"}))
	if want := (TLSFiles{CACert: "/ca.pem", Cert: "/c.pem", Key: "/k.pem"}); tf != want {
		t.Errorf("flags = %+v, want %+v", tf, want)
	}

	s, closeStore, err := OpenSpec(ctx, "etcd://"+srv.client+"/spec", TLSFiles{})
	must(t, err)
	if _, ok := s.(*Store); !ok {
		t.Errorf("etcd URL opened a %T", s)
	}
	must(t, closeStore())
	dir := t.TempDir()
	s, closeStore, err = OpenSpec(ctx, dir, TLSFiles{})
	must(t, err)
	if fs, ok := s.(*store.FileStore); !ok || fs.Root() != dir {
		t.Errorf("directory opened %T", s)
	}
	must(t, closeStore())
	if _, _, err := OpenSpec(ctx, dir, tf); err == nil {
		t.Error("TLS files with a directory store accepted")
	}
}
