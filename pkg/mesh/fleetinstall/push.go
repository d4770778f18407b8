package fleetinstall

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/meshvm/meshvm/pkg/mesh/ownership"
)

// Pushed is where the image went: Ref is the repository at the index's
// digest (what the Deployment runs: a tag can move, a digest cannot).
type Pushed struct {
	Ref    string           `json:"ref"`
	Action ownership.Action `json:"action"` // pushed or unchanged
}

// Push writes the image's index (every architecture built) to repo
// (registry/repository, without a tag) under its tag, unless the registry
// already holds that digest there. Credentials come from the docker
// config, as docker and crane find them, unless opts give others.
func Push(ctx context.Context, repo string, im Image, opts ...remote.Option) (Pushed, error) {
	r, err := name.NewRepository(repo)
	if err != nil {
		return Pushed{}, fmt.Errorf("registry %q: %w: give it as registry/repository, e.g. ghcr.io/you/meshvm-controller", repo, err)
	}
	d, err := im.Index.Digest()
	if err != nil {
		return Pushed{}, err
	}
	tag := r.Tag(im.Tag)
	out := Pushed{Ref: r.Digest(d.String()).String(), Action: ownership.Pushed}
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if desc, err := remote.Head(tag, opts...); err == nil && desc.Digest == d {
		out.Action = ownership.Unchanged
		return out, nil
	}
	if err := remote.WriteIndex(tag, im.Index, opts...); err != nil {
		return Pushed{}, fmt.Errorf("push the controller image to %s: %w (can this machine push there? docker login %s gives it credentials)", tag, err, r.RegistryStr())
	}
	return out, nil
}
