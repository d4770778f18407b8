package credinfo

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshvm/meshvm/pkg/fsroot"
)

// chain mints a root CA and a workload leaf signed by it, as istiod would,
// and returns the PEM chain leaf first (cert-chain.pem's order).
func chain(t *testing.T, notBefore, notAfter time.Time) []byte {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore:             notBefore.Add(-time.Hour),
		NotAfter:              notAfter.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/vmns/sa/vmsa")
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		URIs:         []*url.URL{spiffe},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER})
	return append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})...)
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadCertificate(t *testing.T) {
	notBefore := time.Date(2026, 8, 27, 10, 0, 0, 0, time.UTC)
	notAfter := notBefore.Add(24 * time.Hour)
	good := chain(t, notBefore, notAfter)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	want := Certificate{
		URISANs:   []string{"spiffe://cluster.local/ns/vmns/sa/vmsa"},
		NotBefore: notBefore,
		NotAfter:  notAfter,
	}

	tests := []struct {
		name    string
		data    []byte
		want    Certificate
		wantErr string
	}{
		{name: "chain leaf first", data: good, want: want},
		{name: "key block before the chain is skipped", data: append(append([]byte{}, keyPEM...), good...), want: want},
		{name: "empty file", data: nil, wantErr: "is empty"},
		{name: "not pem", data: []byte("hello\n"), wantErr: "is not PEM"},
		{name: "only a key", data: keyPEM, wantErr: "no CERTIFICATE block (found EC PRIVATE KEY)"},
		{name: "garbage der", data: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")}), wantErr: "parse first certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeFile(t, "cert-chain.pem", tt.data)
			got, err := ReadCertificate(slash, path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadCertificateSubject(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "vm1", Organization: []string{"meshvm"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadCertificate(slash, writeFile(t, "c.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	if err != nil {
		t.Fatal(err)
	}
	if want := "CN=vm1,O=meshvm"; got.Subject != want {
		t.Errorf("got subject %q, want %q", got.Subject, want)
	}
	if got.URISANs != nil {
		t.Errorf("got URI SANs %q, want none", got.URISANs)
	}
}

func TestReadMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "absent")
	tests := []struct {
		name string
		read func(string) error
	}{
		{"certificate", func(p string) error { _, err := ReadCertificate(slash, p); return err }},
		{"token", func(p string) error { _, err := ReadToken(slash, p); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.read(missing); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("got error %v, want one wrapping fs.ErrNotExist", err)
			}
		})
	}
}

// jwt builds a compact token from a header and claims; the signature is
// never checked, so any bytes do.
func jwt(t *testing.T, claims any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]string{"alg": "RS256", "kid": "k1"}) + "." + enc(claims) + "." +
		base64.RawURLEncoding.EncodeToString([]byte("not a real signature"))
}

func TestReadToken(t *testing.T) {
	iat := time.Date(2026, 8, 27, 10, 0, 0, 0, time.UTC)
	exp := iat.Add(time.Hour)
	// The claims `kubectl create token` returns for a TokenRequest with
	// audience istio-ca, as istioctl x workload entry configure makes.
	kube := map[string]any{
		"aud": []string{"istio-ca"},
		"exp": exp.Unix(),
		"iat": iat.Unix(),
		"iss": "https://kubernetes.default.svc.cluster.local",
		"nbf": iat.Unix(),
		"sub": "system:serviceaccount:vmns:vmsa",
		"kubernetes.io": map[string]any{
			"namespace":      "vmns",
			"serviceaccount": map[string]string{"name": "vmsa", "uid": "0b6c8f"},
		},
	}
	kubeWant := Token{
		Subject:   "system:serviceaccount:vmns:vmsa",
		Audiences: []string{"istio-ca"},
		Issuer:    "https://kubernetes.default.svc.cluster.local",
		IssuedAt:  iat,
		ExpiresAt: exp,
	}
	tests := []struct {
		name string
		data string
		want Token
	}{
		{name: "kubernetes token", data: jwt(t, kube), want: kubeWant},
		{name: "trailing newline and spaces", data: "  " + jwt(t, kube) + "\n", want: kubeWant},
		{name: "crlf", data: jwt(t, kube) + "\r\n", want: kubeWant},
		{
			name: "aud as a string",
			data: jwt(t, map[string]any{"aud": "istio-ca", "sub": "s"}),
			want: Token{Subject: "s", Audiences: []string{"istio-ca"}},
		},
		{
			name: "fractional exp",
			data: jwt(t, map[string]any{"exp": 1.5}),
			want: Token{ExpiresAt: time.Unix(1, 5e8).UTC()},
		},
		{
			name: "padded base64",
			data: strings.Replace(jwt(t, map[string]any{"sub": "ab"}), ".", "==.", 1),
			want: Token{Subject: "ab"},
		},
		{
			name: "unsigned token",
			data: strings.TrimSuffix(jwt(t, map[string]any{"sub": "s"}), base64.RawURLEncoding.EncodeToString([]byte("not a real signature"))),
			want: Token{Subject: "s"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ReadToken(slash, writeFile(t, "istio-token", []byte(tt.data)))
			if err != nil {
				t.Fatalf("got error %v, want nil", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestReadTokenMalformed(t *testing.T) {
	secret := "c2VjcmV0LXRva2VuLXRleHQ"
	hdr := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256"}`))
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
	tests := []struct {
		name    string
		data    string
		wantErr string
	}{
		{"empty", "\n", "token is empty"},
		{"one part", secret, "1 dot-separated parts, want 3"},
		{"four parts", secret + "." + secret + "." + secret + "." + secret, "4 dot-separated parts, want 3"},
		{"header not base64", "!!" + secret + "." + secret + ".sig", "token header: not base64url"},
		{"header not json", b64("secret-token-text") + "." + b64("{}") + ".sig", "token header: not a JSON object"},
		{"payload not json", hdr + "." + b64("{secret-token-text") + ".sig", "token payload: not a JSON object"},
		{"payload an array", hdr + "." + b64(`["secret-token-text"]`) + ".sig", "token payload: not a JSON object"},
		{"sub not a string", hdr + "." + b64(`{"sub":12345}`) + ".sig", `claim "sub" is a JSON number, want a string`},
		{"exp not a number", hdr + "." + b64(`{"exp":"secret-token-text"}`) + ".sig", "not a number of seconds"},
		{"aud an object", hdr + "." + b64(`{"aud":{"x":"secret-token-text"}}`) + ".sig", `claim "aud" is neither`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadToken(slash, writeFile(t, "istio-token", []byte(tt.data)))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
			}
			for _, leak := range []string{secret, "secret-token-text", "12345"} {
				if strings.Contains(err.Error(), leak) {
					t.Errorf("got error %q quoting the token (%q), want no token text", err, leak)
				}
			}
		})
	}
}

// The test files are host paths: read them from the host's root.
var slash, _ = fsroot.New("/")

// Status is root reading where istio-proxy writes: a FIFO planted at the
// certificate path must not block it (os.ReadFile waited forever for a
// writer), a link must not lead it to root's files, and a huge or endless
// file is not read to its end.
func TestReadRefusesWhatTheProxyCouldPlant(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "cert-chain.pem")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	shadow := filepath.Join(dir, "shadow")
	os.WriteFile(shadow, []byte("root:$6$secret:19000:0:99999:7:::\n"), 0o600)
	link := filepath.Join(dir, "link.pem")
	os.Symlink(shadow, link)
	zero := filepath.Join(dir, "zero.pem")
	os.Symlink("/dev/zero", zero)
	huge := filepath.Join(dir, "huge.pem")
	f, _ := os.Create(huge)
	f.Truncate(4 << 30) // sparse: 4 GiB to read, none on disk
	f.Close()
	for _, tt := range []struct{ name, path, want string }{
		{"fifo", fifo, "not a regular file"},
		{"link to a root file", link, "symbolic link"},
		{"link to /dev/zero", zero, "symbolic link"},
		{"huge file", huge, "too large"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 2)
			go func() { _, err := ReadCertificate(slash, tt.path); done <- err }()
			go func() { _, err := ReadToken(slash, tt.path); done <- err }()
			for range 2 {
				select {
				case err := <-done:
					if err == nil || !strings.Contains(err.Error(), tt.want) {
						t.Errorf("got %v, want an error saying %q", err, tt.want)
					}
					if err != nil && strings.Contains(err.Error(), "secret") {
						t.Errorf("the error quotes the linked file: %v", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the read blocked")
				}
			}
		})
	}
}
