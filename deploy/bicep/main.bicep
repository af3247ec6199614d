// Azure resources for ptu-orchestrator beside an existing Azure OpenAI account:
// Event Hubs (request queue + token events), a storage account for the batch files
// (container ptu-files, PTU_BLOB_ACCOUNT_URL) and the request hubs' checkpoints
// (PTU_EVENTHUB_CHECKPOINT_STORE=blob, read by KEDA's Event Hubs scaler), Azure Managed
// Redis with AOF persistence and Entra ID access only (state, replies, estimate, slots;
// PTU_REDIS_AUTH=entra), a user-assigned identity with the roles it needs and, given the
// AKS cluster's OIDC issuer, its federation with the pods' service account.
targetScope = 'resourceGroup'

@description('Name prefix for the new resources.')
param prefix string = 'ptu'
param location string = resourceGroup().location
@description('Name of the existing Azure OpenAI (Cognitive Services) account.')
param openAiAccountName string
@description('PTU deployments the worker drains: one request hub each, named ptu-requests-<deployment>.')
param deploymentNames array = ['gpt-4o-ptu']
@description('Azure Managed Redis SKU (every SKU from Balanced_B1 up takes AOF persistence).')
param redisSku string = 'Balanced_B5'
@description('OIDC issuer URL of the AKS cluster (az aks show --query oidcIssuerProfile.issuerUrl); empty: federate the identity yourself.')
param aksOidcIssuer string = ''
@description('Namespace of the ptu-orchestrator service account in the cluster.')
param namespace string = 'ptu'

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${prefix}-orchestrator'
  location: location
}

// Workload identity: the pods of the ServiceAccount ptu-orchestrator get this identity's tokens
resource federation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (!empty(aksOidcIssuer)) {
  parent: identity
  name: 'aks-ptu-orchestrator'
  properties: {
    issuer: aksOidcIssuer
    subject: 'system:serviceaccount:${namespace}:ptu-orchestrator'
    audiences: ['api://AzureADTokenExchange']
  }
}

resource ehNamespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: '${prefix}-${uniqueString(resourceGroup().id)}'
  location: location
  sku: { name: 'Standard', tier: 'Standard', capacity: 1 }
  properties: { disableLocalAuth: true }
}

// One hub per deployment (PTU_EVENTHUB_NAME-<deployment>), so a paused
// deployment never holds back another's partitions.
resource requests 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = [for name in deploymentNames: {
  parent: ehNamespace
  name: 'ptu-requests-${name}'
  properties: { partitionCount: 4, messageRetentionInDays: 1 }
}]

// Batch API lines have a hub of their own per deployment (`...-<deployment>.batch`): the
// workers serve a tenant's other queued work first (orchestrator/queues/classes.py).
resource batchRequests 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = [for name in deploymentNames: {
  parent: ehNamespace
  name: 'ptu-requests-${name}.batch'
  properties: { partitionCount: 4, messageRetentionInDays: 1 }
}]

resource tokenEvents 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = {
  parent: ehNamespace
  name: 'ptu-token-events'
  properties: { partitionCount: 2, messageRetentionInDays: 1 }
}

// Batch files (PTU_BLOB_ACCOUNT_URL, PTU_BLOB_CONTAINER) and Event Hubs checkpoints as blob
// metadata (PTU_EVENTHUB_CHECKPOINT_CONTAINER); Entra ID only, no shared keys
resource checkpoints 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: take('${prefix}ckpt${uniqueString(resourceGroup().id)}', 24)
  location: location
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
  }
}

resource blobs 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: checkpoints
  name: 'default'
}

resource checkpointContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'ptu-checkpoints'
  properties: { publicAccess: 'None' }
}

// Every ingress replica reads and writes the same batch files here
resource filesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobs
  name: 'ptu-files'
  properties: { publicAccess: 'None' }
}

// Azure Managed Redis: the queue, every request record and result, the estimate and the
// global slots live here, so it must not forget them (README "Redis in production"):
// AOF written every second, no eviction, high availability; Entra ID only (the access
// keys are off), so the processes connect with PTU_REDIS_AUTH=entra and no key exists.
// The Enterprise cluster policy shows one endpoint (PTU_REDIS_CLUSTER=false).
resource redis 'Microsoft.Cache/redisEnterprise@2025-07-01' = {
  name: '${prefix}-${uniqueString(resourceGroup().id)}'
  location: location
  sku: { name: redisSku }
  properties: {
    minimumTlsVersion: '1.2'
    highAvailability: 'Enabled'
    // TLS and Entra ID on the public endpoint; put a private endpoint in front to close it
    publicNetworkAccess: 'Enabled'
  }
}

resource redisDatabase 'Microsoft.Cache/redisEnterprise/databases@2025-07-01' = {
  parent: redis
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: 'EnterpriseCluster'
    evictionPolicy: 'NoEviction'
    persistence: { aofEnabled: true, aofFrequency: '1s' }
    accessKeysAuthentication: 'Disabled'
  }
}

// The identity's object id is its Redis user (the username of AUTH, the token its password)
resource redisUser 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-07-01' = {
  parent: redisDatabase
  name: 'ptuorchestrator'
  properties: {
    accessPolicyName: 'default'
    user: { objectId: identity.properties.principalId }
  }
}

var roles = {
  cognitiveServicesOpenAIUser: '5e0bd9bd-7b93-4f28-af87-19fc36ad61bd'
  monitoringReader: '43d0d8ad-25c7-4714-9337-8ba259a9fe05'
  eventHubsDataOwner: 'f526a384-b230-433a-b45c-95f59c4a2dec'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
}

resource openAiUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: openAi
  name: guid(openAi.id, identity.id, roles.cognitiveServicesOpenAIUser)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.cognitiveServicesOpenAIUser)
  }
}

resource monitoringReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: openAi
  name: guid(openAi.id, identity.id, roles.monitoringReader)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringReader)
  }
}

resource ehOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: ehNamespace
  name: guid(ehNamespace.id, identity.id, roles.eventHubsDataOwner)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.eventHubsDataOwner)
  }
}

// batch files and checkpoints: read, write, delete blobs of the account's containers
resource checkpointWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: checkpoints
  name: guid(checkpoints.id, identity.id, roles.storageBlobDataContributor)
  properties: {
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
  }
}

output identityClientId string = identity.properties.clientId
output eventHubNamespace string = '${ehNamespace.name}.servicebus.windows.net'
output redisHost string = redis.properties.hostName
output redisUrl string = 'rediss://${redis.properties.hostName}:10000/0'
output blobAccountUrl string = checkpoints.properties.primaryEndpoints.blob
output azureResourceId string = openAi.id
output checkpointBlobUrl string = checkpoints.properties.primaryEndpoints.blob
