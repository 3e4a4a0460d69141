// google-auth-library against the broker's GCE metadata emulation: no broker-specific
// code, only GCE_METADATA_HOST in the environment. Prints one JSON line.
const { GoogleAuth, Compute } = require('google-auth-library');

(async () => {
  const auth = new GoogleAuth();
  const client = await auth.getClient();
  const { token } = await client.getAccessToken();
  const project = await auth.getProjectId();
  const explicit = await new Compute().getAccessToken();
  let unknown = 'no error';
  try {
    await new Compute({ serviceAccountEmail: 'nobody@elsewhere.iam.gserviceaccount.com' }).getAccessToken();
  } catch (e) {
    unknown = String(e.message);
  }
  console.log(JSON.stringify({
    kind: client.constructor.name, project, token, explicit_token: explicit.token, unknown_account: unknown,
  }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
