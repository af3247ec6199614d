// Azure resources for ptu-orchestrator beside an existing Azure OpenAI account:
// Event Hubs (request queue + token events), a storage account for the request hubs'
// checkpoints (PTU_EVENTHUB_CHECKPOINT_STORE=blob, read by KEDA's Event Hubs scaler),
// Azure Cache for Redis (state, replies, estimate, slots), a user-assigned identity
// with the roles it needs.
targetScope = 'resourceGroup'

@description('Name prefix for the new resources.')
param prefix string = 'ptu'
param location string = resourceGroup().location
@description('Name of the existing Azure OpenAI (Cognitive Services) account.')
param openAiAccountName string
@description('PTU deployments the worker drains: one request hub each, named ptu-requests-<deployment>.')
param deploymentNames array = ['gpt-4o-ptu']

resource openAi 'Microsoft.CognitiveServices/accounts@2024-10-01' existing = {
  name: openAiAccountName
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${prefix}-orchestrator'
  location: location
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

// Event Hubs checkpoints as blob metadata (PTU_EVENTHUB_CHECKPOINT_CONTAINER)
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

resource redis 'Microsoft.Cache/redis@2024-03-01' = {
  name: '${prefix}-${uniqueString(resourceGroup().id)}'
  location: location
  properties: {
    sku: { name: 'Standard', family: 'C', capacity: 1 }
    enableNonSslPort: false
    minimumTlsVersion: '1.2'
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
output azureResourceId string = openAi.id
output checkpointBlobUrl string = checkpoints.properties.primaryEndpoints.blob
