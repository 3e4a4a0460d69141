// @azure/identity's ManagedIdentityCredential against the broker's App Service managed
// identity emulation: no broker-specific code, only IDENTITY_ENDPOINT and
// IDENTITY_HEADER in the environment. Prints one JSON line.
const { ManagedIdentityCredential } = require('@azure/identity');

async function refusal(scope) {
  try {
    await new ManagedIdentityCredential().getToken(scope);
    return 'no error';
  } catch (e) {
    return String(e.message);
  }
}

(async () => {
  const token = await new ManagedIdentityCredential().getToken('https://management.azure.com/.default');
  const unknown = await refusal('https://vault.azure.net/.default');
  console.log(JSON.stringify({
    token: token.token, expires_on: token.expiresOnTimestamp, unknown_resource: unknown,
  }));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
