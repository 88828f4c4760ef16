package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vmsnap/vmsnap/store"
)

// TLSFiles name the PEM files of a TLS connection to etcd, as etcdctl's
// --cacert, --cert and --key do.
type TLSFiles struct {
	// CACert is the CA bundle that signed etcd's server certificates;
	// empty means the system's roots.
	CACert string
	// Cert and Key are this client's certificate and key, for an etcd
	// started with --client-cert-auth. Both or neither.
	Cert, Key string
}

// IsZero reports whether no file is named.
func (f TLSFiles) IsZero() bool { return f == TLSFiles{} }

// Config loads the files into a TLS configuration (TLS 1.2 or newer).
func (f TLSFiles) Config() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CACert != "" {
		pem, err := os.ReadFile(f.CACert)
		if err != nil {
			return nil, fmt.Errorf("etcdstore: CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcdstore: CA certificate %s: no PEM certificate in it", f.CACert)
		}
		cfg.RootCAs = pool
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("etcdstore: a client certificate needs both the certificate and the key file")
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("etcdstore: client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// ParseURL reads a store URL into the etcd client's configuration (no TLS
// configuration loaded yet: that is what OpenURL does with the TLSFiles),
// the Store's Options and the TLS files it names:
//
//	etcd://[USER[:PASSWORD]@]HOST:PORT[,HOST:PORT...][/PREFIX][?PARAMS]
//	etcds://...   the same over TLS
//
// HOST:PORT are the client endpoints of the etcd cluster; PREFIX is the
// key prefix (DefaultPrefix when the path is empty or "/"). PARAMS are
//
//	cacert=FILE, cert=FILE, key=FILE   TLS files (see TLSFiles); any of
//	                                    them makes an etcd:// URL use TLS
//	lock-ttl=DURATION                  Options.LockTTL, e.g. 15s
//	timeout=DURATION                   Options.RequestTimeout
//
// USER and PASSWORD are etcd's own authentication (etcdctl --user); the
// password is better kept out of command lines. Unknown parameters are an
// error.
func ParseURL(raw string) (clientv3.Config, Options, TLSFiles, error) {
	var (
		cfg  clientv3.Config
		opts Options
		tf   TLSFiles
	)
	bad := func(format string, args ...any) (clientv3.Config, Options, TLSFiles, error) {
		return clientv3.Config{}, Options{}, TLSFiles{}, fmt.Errorf("etcdstore: store URL %q: %s", redact(raw), fmt.Sprintf(format, args...))
	}
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok || (scheme != "etcd" && scheme != "etcds") {
		return bad("want etcd://HOST:PORT[,HOST:PORT...]/PREFIX or etcds://...")
	}
	useTLS := scheme == "etcds"
	rest, query, _ := strings.Cut(rest, "?")
	hosts, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndexByte(hosts, '@'); i >= 0 {
		user, pass, _ := strings.Cut(hosts[:i], ":")
		var err error
		if cfg.Username, err = url.PathUnescape(user); err != nil {
			return bad("user: %v", err)
		}
		if cfg.Password, err = url.PathUnescape(pass); err != nil {
			return bad("password: %v", err)
		}
		if cfg.Username == "" {
			return bad("empty user name")
		}
		hosts = hosts[i+1:]
	}
	if hosts == "" {
		return bad("no HOST:PORT")
	}
	for _, h := range strings.Split(hosts, ",") {
		host, port, err := net.SplitHostPort(h)
		if err != nil {
			return bad("endpoint %q: %v", h, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || host == "" {
			return bad("endpoint %q: want HOST:PORT", h)
		}
		cfg.Endpoints = append(cfg.Endpoints, h)
	}
	prefix, err := url.PathUnescape(path)
	if err != nil {
		return bad("prefix: %v", err)
	}
	if prefix = strings.TrimRight(prefix, "/"); prefix != "" {
		opts.Prefix = "/" + prefix
	}
	params, err := url.ParseQuery(query)
	if err != nil {
		return bad("%v", err)
	}
	for k, vs := range params {
		if len(vs) != 1 {
			return bad("parameter %q given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "cacert":
			tf.CACert = v
		case "cert":
			tf.Cert = v
		case "key":
			tf.Key = v
		case "lock-ttl", "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return bad("%s=%q: want a positive duration such as 15s", k, v)
			}
			if k == "timeout" {
				opts.RequestTimeout = d
			} else {
				opts.LockTTL = d
			}
		default:
			return bad("unknown parameter %q (want cacert, cert, key, lock-ttl or timeout)", k)
		}
	}
	if !tf.IsZero() {
		useTLS = true
	}
	for i, h := range cfg.Endpoints {
		if useTLS {
			cfg.Endpoints[i] = "https://" + h
		} else {
			cfg.Endpoints[i] = "http://" + h
		}
	}
	return cfg, opts, tf, nil
}

// OpenURL opens the Store a URL names (see ParseURL). Files named in
// tlsFiles, for example from command-line options, take the place of the
// URL's own and make the connection use TLS.
func OpenURL(ctx context.Context, raw string, tlsFiles TLSFiles) (*Store, error) {
	cfg, opts, tf, err := ParseURL(raw)
	if err != nil {
		return nil, err
	}
	if tlsFiles.CACert != "" {
		tf.CACert = tlsFiles.CACert
	}
	if tlsFiles.Cert != "" || tlsFiles.Key != "" {
		tf.Cert, tf.Key = tlsFiles.Cert, tlsFiles.Key
	}
	if !tf.IsZero() || strings.HasPrefix(raw, "etcds://") {
		if cfg.TLS, err = tf.Config(); err != nil {
			return nil, err
		}
		for i, e := range cfg.Endpoints {
			cfg.Endpoints[i] = "https://" + strings.TrimPrefix(strings.TrimPrefix(e, "http://"), "https://")
		}
	}
	return Open(ctx, cfg, opts)
}

// IsURL reports whether s names an etcd store (etcd:// or etcds://) rather
// than a directory, for a --store option that takes either.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "etcd://") || strings.HasPrefix(s, "etcds://")
}

// redact hides the password of a URL in messages.
func redact(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	end := len(rest)
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		end = i
	}
	at := strings.LastIndexByte(rest[:end], '@')
	if at < 0 {
		return raw
	}
	if user, _, hasPass := strings.Cut(rest[:at], ":"); hasPass {
		return scheme + "://" + user + ":xxxxx" + rest[at:]
	}
	return raw
}

// RegisterFlags adds --etcd-cacert, --etcd-cert and --etcd-key to fs,
// setting f, with f's current values as defaults (so that a command that
// parses its global options again after a subcommand keeps what was given
// before it).
func (f *TLSFiles) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&f.CACert, "etcd-cacert", f.CACert, "CA bundle `FILE` that signed etcd's certificates (implies TLS)")
	fs.StringVar(&f.Cert, "etcd-cert", f.Cert, "client certificate `FILE` for etcd (implies TLS)")
	fs.StringVar(&f.Key, "etcd-key", f.Key, "client key `FILE` for etcd")
}

// OpenSpec opens the store a --store option names: an etcd:// or
// etcds:// URL gives a *Store (see OpenURL, with tlsFiles), anything else
// a store.FileStore rooted there ("" is store.DefaultRoot). closeStore releases
// the store (for a FileStore it does nothing). TLS files given with a
// directory are an error rather than ignored.
func OpenSpec(ctx context.Context, spec string, tlsFiles TLSFiles) (s store.Store, closeStore func() error, err error) {
	if IsURL(spec) {
		es, err := OpenURL(ctx, spec, tlsFiles)
		if err != nil {
			return nil, nil, err
		}
		return es, es.Close, nil
	}
	if !tlsFiles.IsZero() {
		return nil, nil, fmt.Errorf("etcdstore: etcd TLS files given, but the store %q is a directory, not an etcd:// URL", spec)
	}
	fs, err := store.NewFileStore(spec)
	if err != nil {
		return nil, nil, err
	}
	return fs, func() error { return nil }, nil
}
